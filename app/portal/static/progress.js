// Live progress of a job on a page: an element with data-job and data-status (queued or running) gets a
// progress bar fed by the job's event stream; when the job ends the page reloads to show the result.
(function () {
  "use strict";
  // A reload cancels a navigation the user has started (a click on a link while the job ends would bring them
  // back here), so a page being left waits: it reloads only if it is still here a while later (the navigation
  // was a download, or was stopped).
  var LEAVING_MS = 15000, leavingSince = 0;
  window.addEventListener("beforeunload", function () { leavingSince = Date.now(); });
  function showResult() {
    if (leavingSince && Date.now() - leavingSince < LEAVING_MS) { window.setTimeout(showResult, 500); return; }
    window.location.reload();
  }
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
      if (payload.final) { source.close(); showResult(); }
      else if (stage && payload.data && payload.data.status === "running") { stage.textContent = "Running…"; }
    });
  });
})();
