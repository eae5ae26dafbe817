// Live progress of a job on a page: an element with data-job and data-status (queued or running) gets a
// progress bar fed by the job's event stream; when the job ends the page reloads to show the result.
(function () {
  "use strict";
  document.querySelectorAll("[data-job]").forEach(function (box) {
    var job = box.getAttribute("data-job"), status = box.getAttribute("data-status");
    if (!job || (status !== "queued" && status !== "running") || !window.EventSource) { return; }
    var bar = box.querySelector("progress"), stage = box.querySelector("[aria-live]");
    var source = new EventSource("/portal/jobs/" + job + "/events");
    source.addEventListener("progress", function (ev) {
      var data = JSON.parse(ev.data).data || {};
      if (bar && typeof data.progress === "number") { bar.value = Math.round(100 * data.progress); bar.textContent = bar.value + "%"; }
      if (stage) {
        var words = [data.stage, data.label].filter(Boolean).join(": ");
        if (data.permutations) { words += " · " + data.permutations.toLocaleString() + " permutations"; }
        if (data.max_stderr) { words += " · largest standard error " + data.max_stderr.toPrecision(3); }
        stage.textContent = words || "Working…";
      }
    });
    source.addEventListener("state", function (ev) {
      var payload = JSON.parse(ev.data);
      if (payload.final) { source.close(); window.location.reload(); }
      else if (stage && payload.data && payload.data.status === "running") { stage.textContent = "Running…"; }
    });
  });
})();
