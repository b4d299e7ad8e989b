// Ferry web UI: copy buttons and the replication overview's live updates.
// Written for this project. No inline script anywhere (see the CSP).
"use strict";

document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var field = document.getElementById(button.getAttribute("data-copy"));
      if (!field) return;
      field.select();
      var done = function () { button.textContent = "Copied"; };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(field.value).then(done, function () {
          document.execCommand("copy"); done();
        });
      } else {
        document.execCommand("copy"); done();
      }
    });
  });

  var overview = document.getElementById("overview");
  if (overview) poll(overview);
});

function poll(table) {
  var busy = false;
  function update() {
    if (busy || document.hidden) return;
    busy = true;
    // The page names the URL (with the base_url path prefix, if any).
    fetch(table.getAttribute("data-poll") || "/ui/api/overview", { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (!data) return;
        var byName = {};
        data.replications.forEach(function (r) { byName[r.name] = r; });
        table.querySelectorAll("tr[data-repl]").forEach(function (row) {
          var r = byName[row.getAttribute("data-repl")];
          if (!r) return;
          set(row, "state", r.state);
          set(row, "progress", r.progress);
          set(row, "lag", r.lag);
          var stop = row.querySelector('[data-field="stop"]');
          if (stop) stop.hidden = !r.running;
          var last = row.querySelector('[data-field="last"]');
          // The server renders this cell with every value escaped.
          if (last && last.getAttribute("data-html") !== r.last) {
            last.setAttribute("data-html", r.last);
            last.innerHTML = r.last;
          }
        });
      })
      .catch(function () {})
      .then(function () { busy = false; });
  }
  function set(row, field, text) {
    var cell = row.querySelector('[data-field="' + field + '"]');
    if (cell && cell.textContent !== text) cell.textContent = text;
  }
  setInterval(update, 2000);
}
