// Polls an upload's status while it is checked or imported, and reloads the page when done.
"use strict";
window.addEventListener("load", function () {
  const root = document.getElementById("import-job");
  if (!root || root.dataset.inProgress !== "1") return;
  const bar = document.getElementById("job-progress");
  const text = document.getElementById("job-progress-text");
  const label = document.getElementById("job-status");
  function describe(s) {
    let line = s.processed + " / " + (s.total || "?") + " · " + s.errors + " ✗";
    if (s.eta_seconds !== null) line += " · ~" + s.eta_seconds + " s";
    return line;
  }
  function poll() {
    fetch(root.dataset.statusUrl, { credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (s) {
        if (!s.in_progress) { window.location.reload(); return; }
        label.textContent = s.status_label;
        if (s.total) { bar.max = s.total; bar.value = s.processed; } else { bar.removeAttribute("value"); }
        if (s.status === "applying") bar.removeAttribute("value");
        text.textContent = describe(s);
        setTimeout(poll, 1000);
      })
      .catch(function () { setTimeout(poll, 3000); });
  }
  setTimeout(poll, 500);
});
