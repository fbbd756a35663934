/* The message page refreshes its counters, progress bar and timeline while the message is being
   sent, from the page's own JSON endpoint, and stops once the message is finished. */
(function () {
  "use strict";

  var INTERVAL = 4000;
  var MAX_INTERVAL = 60000;

  function each(root, selector, callback) {
    Array.prototype.forEach.call(root.querySelectorAll(selector), callback);
  }

  function update(root, data) {
    each(root, "[data-count]", function (element) {
      var value = data.counts[element.getAttribute("data-count")];
      if (value !== undefined) { element.textContent = value; }
    });
    each(root, "[data-segment]", function (element) {
      var value = data.percents[element.getAttribute("data-segment")];
      if (value !== undefined) { element.style.width = value + "%"; }
    });
    each(root, "[data-progress-bar]", function (element) {
      element.title = data.title;
      element.setAttribute("aria-label", data.title);
    });
    each(root, "[data-field='done_percent']", function (element) {
      element.textContent = data.done_percent + "%";
    });
    each(root, "[data-status]", function (element) {
      element.textContent = data.status_label;
      element.className = "ums-status ums-status-" + data.status;
    });
    each(root, "[data-retry-button]", function (element) {
      /* failures that appear while the page is open can be retried without a reload */
      element.disabled = !(data.counts.failed > 0) || data.status === "retracted";
    });
    Object.keys(data.timeline).forEach(function (key) {
      var entry = data.timeline[key];
      each(root, "[data-timeline='" + key + "']", function (element) { element.textContent = entry.value; });
      each(root, "[data-timeline-label='" + key + "']", function (element) { element.textContent = entry.label; });
    });
  }

  function finish(root) {
    root.setAttribute("data-finished", "true");
    each(root, "[data-finished-note]", function (element) { element.hidden = false; });
  }

  function poll(root, url, delay) {
    window.setTimeout(function () {
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (response) {
          if (response.status >= 400 && response.status < 500) {
            return null; /* logged out or no longer allowed: stop asking */
          }
          if (!response.ok) { throw new Error("HTTP " + response.status); }
          return response.json().then(function (data) {
            update(root, data);
            if (data.finished) { finish(root); } else { poll(root, url, INTERVAL); }
          });
        })
        .catch(function () {
          poll(root, url, Math.min(delay * 2, MAX_INTERVAL)); /* the server is busy or restarting */
        });
    }, delay);
  }

  function start() {
    var root = document.querySelector("[data-progress-url]");
    if (!root || root.getAttribute("data-finished") === "true") { return; }
    poll(root, root.getAttribute("data-progress-url"), INTERVAL);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
