// Fills server, port and encryption from the chosen provider preset.
"use strict";
window.addEventListener("load", function () {
  const select = document.getElementById("id_preset");
  if (!select) return;
  const presets = JSON.parse(select.dataset.presets || "{}");
  select.addEventListener("change", function () {
    const preset = presets[select.value];
    if (!preset) return;
    document.getElementById("id_host").value = preset.host;
    document.getElementById("id_port").value = preset.port;
    document.getElementById("id_encryption").value = preset.encryption;
    document.getElementById("id_port").dispatchEvent(new Event("change"));
  });
});
