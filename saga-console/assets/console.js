// saga console: keeps the live part of a page fresh without a reload. Nothing else; every
// action works without this script.
(function () {
  "use strict";
  function poll(element) {
    var url = element.getAttribute("data-refresh");
    var every = parseInt(element.getAttribute("data-every"), 10) || 5000;
    function tick() {
      fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (response) {
          // The session ended: the refresh was sent to the login page. Go there, whole.
          if (response.redirected) { window.location.assign(response.url); throw new Error("signed out"); }
          if (response.ok) { return response.text(); }
          throw new Error("refresh refused: " + response.status);
        })
        .then(function (html) { element.innerHTML = html; })
        .catch(function () { /* keep what is shown; try again at the next tick */ })
        .then(function () { setTimeout(tick, every); });
    }
    setTimeout(tick, every);
  }
  document.addEventListener("DOMContentLoaded", function () {
    var live = document.querySelectorAll("[data-refresh]");
    for (var i = 0; i < live.length; i++) { poll(live[i]); }
  });
})();
