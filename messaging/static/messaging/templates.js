// The template page: a live preview rendered on the server by the same renderer as a template
// send, with a sample value box for each variable the subject and body use.
"use strict";
(function () {
  const panel = document.getElementById("template-preview");
  if (!panel) {
    return;
  }
  const form = panel.closest("form");
  const subject = document.getElementById("id_subject");
  const html = document.getElementById("id_html");
  const samples = document.getElementById("template-samples");
  const frame = document.getElementById("template-preview-frame");
  const subjectShown = document.getElementById("template-preview-subject");
  const problems = document.getElementById("template-preview-problems");
  const token = form.elements.namedItem("csrfmiddlewaretoken").value;
  let timer = null;
  let latest = 0;

  // A reviewer's page shows the template read-only: its text comes from the panel.
  const source = () => ({
    subject: subject ? subject.value : panel.dataset.subject,
    html: html ? html.value : panel.dataset.html,
  });

  function sampleInputs() {
    return Array.from(samples.querySelectorAll("input[data-variable]"));
  }

  function showSamples(variables) {
    const typed = {};
    sampleInputs().forEach((input) => {
      typed[input.dataset.variable] = input.value;
    });
    const current = sampleInputs().map((input) => input.dataset.variable);
    if (current.join(",") === variables.join(",")) {
      return;
    }
    samples.replaceChildren();
    variables.forEach((name) => {
      const row = document.createElement("div");
      row.className = "form-row";
      const label = document.createElement("label");
      const input = document.createElement("input");
      input.type = "text";
      input.id = "template-sample-" + name;
      input.name = "sample." + name;
      input.dataset.variable = name;
      input.value = typed[name] || "";
      label.htmlFor = input.id;
      label.textContent = panel.dataset.sampleLabel.replace("{name}", "{{" + name + "}}") + ":";
      row.append(label, " ", input);
      samples.append(row);
    });
  }

  function showProblems(found) {
    problems.replaceChildren();
    Object.values(found || {}).forEach((text) => {
      const item = document.createElement("li");
      item.textContent = text;
      problems.append(item);
    });
  }

  function refresh() {
    const request = ++latest;
    const data = new FormData();
    const text = source();
    data.append("subject", text.subject);
    data.append("html", text.html);
    sampleInputs().forEach((input) => {
      data.append("sample." + input.dataset.variable, input.value);
    });
    fetch(panel.dataset.previewUrl, {
      method: "POST",
      body: data,
      credentials: "same-origin",
      headers: { "X-CSRFToken": token },
    })
      .then((response) => (response.ok ? response.json() : Promise.reject(response.status)))
      .then((answer) => {
        if (request !== latest) {
          return;
        }
        showSamples(answer.variables);
        subjectShown.textContent = answer.subject;
        frame.srcdoc = answer.html;
        showProblems(answer.problems);
      })
      .catch(() => {
        // The preview stays as it was; saving still checks the template.
      });
  }

  function later() {
    clearTimeout(timer);
    timer = setTimeout(refresh, 300);
  }

  [subject, html].forEach((field) => {
    if (field) {
      field.addEventListener("input", later);
    }
  });
  samples.addEventListener("input", later);
})();
