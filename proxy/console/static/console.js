// Review console: live updates of the decisions list and keyboard shortcuts.
// Served from /console/static (the page's CSP allows no inline script).
(function () {
  "use strict";
  var table = document.querySelector("table[data-live]");
  if (table) {
    var body = table.tBodies[0];
    var toggle = document.getElementById("live");
    setInterval(function () {
      if ((toggle && !toggle.checked) || document.hidden) return;
      if (body.contains(document.activeElement)) return; // don't move what the user is on
      fetch(table.getAttribute("data-live"), { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (html === null) return;
          // Server-rendered, escaped rows from our own origin (never client data).
          var fresh = document.createElement("tbody");
          fresh.innerHTML = html;
          if (fresh.innerHTML !== body.innerHTML) { table.replaceChild(fresh, body); body = fresh; }
        })
        .catch(function () {});
    }, 3000);
  }
  // j / k move between rows, Enter opens one (links are focusable); "/" focuses search.
  document.addEventListener("keydown", function (e) {
    var t = e.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT")) return;
    if (e.key === "/") {
      var q = document.getElementById("q");
      if (q) { e.preventDefault(); q.focus(); }
      return;
    }
    if (e.key !== "j" && e.key !== "k") return;
    var links = Array.prototype.slice.call(document.querySelectorAll("a.rowlink"));
    if (!links.length) return;
    var i = links.indexOf(document.activeElement);
    i = e.key === "j" ? Math.min(links.length - 1, i + 1) : Math.max(0, i - 1);
    links[i].focus();
    e.preventDefault();
  });
})();
