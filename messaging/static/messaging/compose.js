// The compose page: a live preview of the HTML body, its plain-text part from the server,
// only the chosen kind of recipients shown, and a warning before leaving unsaved changes;
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
