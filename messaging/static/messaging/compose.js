// The compose page: a live preview of the HTML body, its plain-text part from the server,
// starting from a template, only the chosen kind of recipients shown, and a warning before
// leaving unsaved changes;
// on the review page, one send per press.
"use strict";
(function () {
  // Review page: a second press of Confirm send while the first is on its way does nothing.
  const confirm = document.getElementById("review-confirm");
  if (confirm) {
    confirm.addEventListener("submit", (event) => {
      if (confirm.dataset.sending) {
        event.preventDefault();
      }
      confirm.dataset.sending = "1";
    });
  }

  const form = document.getElementById("compose-form");
  if (!form) {
    return;
  }
  const body = form.elements.namedItem("html");
  const subject = form.elements.namedItem("subject");
  const frame = document.getElementById("compose-preview");
  const text = document.getElementById("compose-text");
  const subjectShown = document.getElementById("compose-preview-subject");
  const token = form.elements.namedItem("csrfmiddlewaretoken").value;
  let previewTimer = null;
  let textTimer = null;
  let latest = 0;
  let dirty = false;

  function showPreview() {
    frame.srcdoc = body.value;
  }

  function fetchText() {
    const request = ++latest;
    const data = new FormData();
    data.append("html", body.value);
    fetch(form.dataset.textUrl, {
      method: "POST",
      body: data,
      credentials: "same-origin",
      headers: { "X-CSRFToken": token },
    })
      .then((response) => (response.ok ? response.json() : Promise.reject(response.status)))
      .then((answer) => {
        if (request === latest) {
          text.textContent = answer.text;
        }
      })
      .catch(() => {
        // The preview stays as it was; saving the draft still derives the text.
      });
  }

  body.addEventListener("input", () => {
    clearTimeout(previewTimer);
    previewTimer = setTimeout(showPreview, 150);
    clearTimeout(textTimer);
    textTimer = setTimeout(fetchText, 400);
  });
  subject.addEventListener("input", () => {
    subjectShown.textContent = subject.value;
  });

  // "Start from a template": a value box for each variable of the chosen template; Fill asks
  // the server to render it (the same renderer as a template send) into subject and body.
  const templateChoice = document.getElementById("compose-template-choice");
  if (templateChoice) {
    const values = document.getElementById("compose-template-values");
    const fill = document.getElementById("compose-template-fill");
    const result = document.getElementById("compose-template-result");
    const channel = form.elements.namedItem("channel");

    const names = (option, key) =>
      option && option.dataset[key] ? option.dataset[key].split(",") : [];

    function showValues() {
      const option = templateChoice.selectedOptions[0];
      values.replaceChildren();
      result.textContent = "";
      names(option, "variables").forEach((name) => {
        const row = document.createElement("div");
        row.className = "form-row";
        const label = document.createElement("label");
        const input = document.createElement("input");
        input.type = "text";
        input.name = "compose_para." + name;
        input.dataset.variable = name;
        input.id = "compose-para-" + name;
        label.htmlFor = input.id;
        label.textContent = values.dataset.label.replace("{name}", "{{" + name + "}}") + ":";
        row.append(label, " ", input);
        values.append(row);
      });
      const personal = names(option, "perRecipient");
      if (personal.length) {
        const note = document.createElement("p");
        note.className = "help";
        const shown = personal.map((name) => "{{" + name + "}}").join(", ");
        note.textContent = values.dataset.perRecipientNote.replace("{names}", shown);
        values.append(note);
      }
      values.hidden = !values.childElementCount;
      fill.disabled = !templateChoice.value;
    }

    function offerChannelTemplates() {
      // Another channel's template cannot be used on the chosen channel.
      Array.from(templateChoice.options).forEach((option) => {
        const own = option.dataset.channel;
        option.disabled = Boolean(option.value && own && channel.value && own !== channel.value);
      });
      if (templateChoice.selectedOptions[0] && templateChoice.selectedOptions[0].disabled) {
        templateChoice.value = "";
        showValues();
      }
    }

    function fillFromTemplate() {
      if ((subject.value.trim() || body.value.trim()) && !window.confirm(form.dataset.replaceWarning)) {
        return;
      }
      const data = new FormData();
      data.append("template", templateChoice.value);
      data.append("channel", channel.value);
      values.querySelectorAll("input[data-variable]").forEach((input) => {
        data.append("para." + input.dataset.variable, input.value);
      });
      fetch(form.dataset.templateUrl, {
        method: "POST",
        body: data,
        credentials: "same-origin",
        headers: { "X-CSRFToken": token },
      })
        .then((response) => response.json())
        .then((answer) => {
          if (answer.error) {
            result.textContent = answer.error;
            result.className = "errornote";
            return;
          }
          subject.value = answer.subject;
          body.value = answer.html;
          subjectShown.textContent = answer.subject;
          text.textContent = answer.text;
          showPreview();
          dirty = true;
          result.textContent = "";
          result.className = "";
        })
        .catch(() => {
          result.textContent = values.dataset.failed;
          result.className = "errornote";
        });
    }

    templateChoice.addEventListener("change", showValues);
    channel.addEventListener("change", offerChannelTemplates);
    fill.addEventListener("click", fillFromTemplate);
    offerChannelTemplates();
    showValues();
  }

  function showAudience() {
    const chosen = form.querySelector("input[name=audience_kind]:checked");
    const kind = chosen ? chosen.value : "";
    form.querySelectorAll("[data-audience]").forEach((row) => {
      row.hidden = row.dataset.audience !== kind;
    });
  }
  form.querySelectorAll("input[name=audience_kind]").forEach((radio) => {
    radio.addEventListener("change", showAudience);
  });
  showAudience();

  form.addEventListener("input", () => {
    dirty = true;
  });
  form.addEventListener("change", () => {
    dirty = true;
  });
  form.addEventListener("submit", () => {
    dirty = false;
  });
  window.addEventListener("beforeunload", (event) => {
    if (dirty) {
      event.preventDefault();
      event.returnValue = form.dataset.leaveWarning;
    }
  });
})();
