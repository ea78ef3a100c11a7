// playbookd console: optional, served from the binary. The pages work without it.
// 1. Keeps the relative ages ("5 min ago") current.
// 2. With #live in the address, reloads the view every 10 s (a GET of the same URL).
// It reads nothing but the page itself and sends no request of its own.
"use strict";
(function () {
  function span(seconds) {
    if (seconds < 60) return seconds + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min";
    if (seconds < 86400) return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
    return Math.floor(seconds / 86400) + " d";
  }
  function refreshAges() {
    var now = Date.now();
    document.querySelectorAll(".age[data-at]").forEach(function (node) {
      var at = Date.parse(node.getAttribute("data-at"));
      if (isNaN(at)) return;
      var seconds = Math.round((now - at) / 1000);
      if (Math.abs(seconds) < 2) node.textContent = "just now";
      else if (seconds > 0) node.textContent = span(seconds) + " ago";
      else node.textContent = "in " + span(-seconds);
    });
  }
  function live() {
    if (window.location.hash === "#live") {
      window.setTimeout(function () {
        if (window.location.hash === "#live") window.location.reload();
      }, 10000);
    }
  }
  document.addEventListener("DOMContentLoaded", function () {
    refreshAges();
    window.setInterval(refreshAges, 15000);
    live();
    window.addEventListener("hashchange", live);
  });
})();
