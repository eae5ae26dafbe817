// Behaviour every portal page shares, in a file rather than inline so the Content-Security-Policy can forbid
// inline scripts (script-src 'self').
(function () {
  "use strict";
  // The session's CSRF token, from <meta name="appraise-csrf"> (present when signed in).
  window.APPRAISE_CSRF = function () {
    var meta = document.querySelector('meta[name="appraise-csrf"]');
    return meta ? meta.getAttribute("content") : "";
  };
  // <form data-confirm="Question?">: ask before submitting (withdraw, delete).
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      event.preventDefault();
    }
  }, true);
})();
