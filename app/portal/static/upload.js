// The dataset upload: resumable (tus) uploads with a progress bar and a cancel button, then the dataset is made
// from the finished upload(s). Without this script the form posts as plain multipart/form-data.
(function () {
  "use strict";
  var form = document.getElementById("upload-form");
  if (!form || !window.tus || !tus.isSupported) { return; }
  var fileInput = document.getElementById("file"), edgesInput = document.getElementById("edges");
  var drop = document.getElementById("drop"), bar = document.getElementById("upload-progress");
  var box = document.getElementById("progress-box"), bytes = document.getElementById("progress-bytes");
  var percent = document.getElementById("progress-percent"), button = document.getElementById("upload-button");
  var cancel = document.getElementById("cancel-button"), problems = document.getElementById("problems");
  var current = null;

  function human(n) {
    var units = ["B", "KiB", "MiB", "GiB"], i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + units[i];
  }
  function kind() { return form.querySelector("input[name=kind]:checked").value; }
  function showKind() {
    var graph = kind() === "graph";
    document.getElementById("edges-field").hidden = !graph;
    document.getElementById("label-field").hidden = graph;
  }
  form.querySelectorAll("input[name=kind]").forEach(function (r) { r.addEventListener("change", showKind); });
  showKind();

  function setError(field, message) {
    var el = document.getElementById(field + "-error"), input = document.getElementById(field);
    if (!el) { el = document.getElementById("file-error"); input = fileInput; }
    el.textContent = message || ""; el.hidden = !message;
    if (input) { if (message) { input.setAttribute("aria-invalid", "true"); } else { input.removeAttribute("aria-invalid"); } }
  }
  function clearErrors() {
    ["name", "kind", "label_column", "file", "edges"].forEach(function (f) { setError(f, ""); });
    problems.hidden = true; problems.innerHTML = "";
  }
  function showProblems(list) {
    problems.innerHTML = "";
    (list || []).forEach(function (p) {
      var li = document.createElement("li"), strong = document.createElement("strong");
      strong.textContent = p.location || "file";
      li.appendChild(strong);
      li.appendChild(document.createTextNode(": " + p.detail.split(": ").pop() + " "));
      var badge = document.createElement("span"); badge.className = "badge bad"; badge.textContent = p.code;
      li.appendChild(badge);
      var hint = document.createElement("div"); hint.className = "help"; hint.textContent = p.hint || "";
      li.appendChild(hint);
      problems.appendChild(li);
    });
    problems.hidden = !(list && list.length);
  }
  function progress(sent, total) {
    var pct = total ? Math.floor(100 * sent / total) : 0;
    bar.value = pct; bar.textContent = pct + "%";
    percent.textContent = pct + "%"; bytes.textContent = human(sent) + " of " + human(total);
  }

  ["dragenter", "dragover"].forEach(function (e) {
    drop.addEventListener(e, function (ev) { ev.preventDefault(); drop.classList.add("over"); });
  });
  ["dragleave", "drop"].forEach(function (e) {
    drop.addEventListener(e, function (ev) { ev.preventDefault(); drop.classList.remove("over"); });
  });
  drop.addEventListener("drop", function (ev) { if (ev.dataTransfer.files.length) { fileInput.files = ev.dataTransfer.files; } });

  // One file through tus, resuming an earlier upload of the same file if there is one; resolves to its id.
  function send(file, part, offsetBase, total) {
    return new Promise(function (resolve, reject) {
      var upload = new tus.Upload(file, {
        endpoint: "/api/v1/uploads",
        chunkSize: 8 * 1024 * 1024,
        retryDelays: [0, 1000, 3000, 5000, 10000],
        headers: {"X-CSRF-Token": window.APPRAISE_CSRF()},
        metadata: {filename: file.name, filetype: file.type || "application/octet-stream", part: part},
        removeFingerprintOnSuccess: true,
        onProgress: function (sent) { progress(offsetBase + sent, total); },
        onError: function (err) { reject(err); },
        onSuccess: function () { resolve(upload.url.split("/").pop()); }
      });
      current = upload;
      upload.findPreviousUploads().then(function (previous) {
        if (previous.length) { upload.resumeFromPreviousUpload(previous[0]); }
        upload.start();
      });
    });
  }

  function busy(on) { button.disabled = on; cancel.hidden = !on; box.hidden = false; }

  cancel.addEventListener("click", function () {
    if (current) { current.abort(true); current = null; }
    busy(false); box.hidden = true; setError("file", "Upload cancelled.");
  });

  // Make the dataset from the finished upload(s); a 503 (the database was busy: nothing was made) is tried again
  // after the server's Retry-After, a few times.
  function finish(body, retries) {
    return fetch("/portal/datasets/finish", {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": window.APPRAISE_CSRF()},
      body: body
    }).then(function (r) {
      if (r.status !== 503 || retries <= 0) { return r; }
      var wait = Math.min(10, Math.max(0.2, parseFloat(r.headers.get("Retry-After")) || 1));
      return new Promise(function (resolve) { setTimeout(resolve, wait * 1000); })
        .then(function () { return finish(body, retries - 1); });
    });
  }

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    clearErrors();
    var name = document.getElementById("name").value.trim();
    if (!name) { setError("name", "Give the dataset a name."); return; }
    var file = fileInput.files[0];
    if (!file) { setError("file", "Choose a file to upload."); return; }
    var edges = kind() === "graph" && edgesInput.files.length ? edgesInput.files[0] : null;
    var total = file.size + (edges ? edges.size : 0);
    busy(true); progress(0, total);
    send(file, "file", 0, total).then(function (fileId) {
      return (edges ? send(edges, "edges", file.size, total) : Promise.resolve(null)).then(function (edgesId) {
        return finish(JSON.stringify({upload_id: fileId, edges_upload_id: edgesId, name: name, kind: kind(),
                                      label_column: document.getElementById("label_column").value.trim()}), 3);
      });
    }).then(function (r) {
      return r.json().then(function (body) { return {ok: r.ok, body: body}; });
    }).then(function (res) {
      if (res.ok && res.body.location) { window.location = res.body.location; return; }
      busy(false);
      var errors = res.body.errors || {file: res.body.detail || "The upload was refused."};
      var listed = res.body.problems || [];
      if (listed.length && errors.file) {
        errors.file = "The file was refused: " + listed.length + " problem" + (listed.length > 1 ? "s" : "") +
          " (below). Fix the file and upload it again.";
      }
      Object.keys(errors).forEach(function (f) { setError(f, errors[f]); });
      showProblems(listed);
    }).catch(function (err) {
      busy(false);
      if (current !== null) { setError("file", "The upload stopped: " + (err && err.message ? err.message : err) + ". Choose the same file and upload again to resume."); }
    });
  });
})();
