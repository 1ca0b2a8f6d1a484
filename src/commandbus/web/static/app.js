// commandbus dashboard: theme, UTC/local times, live refresh pause, dialogs, copy.
(function () {
  "use strict";
  var store = window.localStorage;
  function get(k) { try { return store.getItem(k); } catch (e) { return null; } }
  function put(k, v) { try { store.setItem(k, v); } catch (e) { /* private mode */ } }

  var theme = get("cb-theme");
  if (theme) document.documentElement.dataset.theme = theme;
  var paused = get("cb-paused") === "1";

  function pad(n, w) { return String(n).padStart(w || 2, "0"); }
  function localText(d) {
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) + "." +
      pad(d.getMilliseconds(), 3) + " local";
  }
  function applyTz(root) {
    var local = get("cb-tz") === "local";
    (root || document).querySelectorAll("time[datetime]").forEach(function (t) {
      if (!t.dataset.utc) t.dataset.utc = t.textContent;
      t.textContent = local ? localText(new Date(t.getAttribute("datetime"))) : t.dataset.utc;
    });
    var b = document.getElementById("tz-toggle");
    if (b) b.textContent = local ? "local" : "UTC";
  }
  function applyPause() {
    var b = document.getElementById("refresh-toggle");
    if (!b) return;
    b.textContent = paused ? "resume live refresh" : "pause live refresh";
    b.setAttribute("aria-pressed", paused ? "true" : "false");
  }

  document.addEventListener("DOMContentLoaded", function () {
    applyTz();
    applyPause();
    document.addEventListener("click", function (ev) {
      var t = ev.target.closest("button, input");
      if (!t) return;
      if (t.id === "theme-toggle") {
        var dark = document.documentElement.dataset.theme
          ? document.documentElement.dataset.theme === "dark"
          : window.matchMedia("(prefers-color-scheme: dark)").matches;
        document.documentElement.dataset.theme = dark ? "light" : "dark";
        put("cb-theme", document.documentElement.dataset.theme);
      } else if (t.id === "tz-toggle") {
        put("cb-tz", get("cb-tz") === "local" ? "utc" : "local");
        applyTz();
      } else if (t.id === "refresh-toggle") {
        paused = !paused;
        put("cb-paused", paused ? "1" : "0");
        applyPause();
      } else if (t.dataset.open) {
        var d = document.getElementById(t.dataset.open);
        if (d && d.showModal) d.showModal();
      } else if (t.dataset.close) {
        var c = document.getElementById(t.dataset.close);
        if (c) c.close();
      } else if (t.hasAttribute("data-copy")) {
        var pre = t.parentElement.querySelector("pre");
        if (pre && navigator.clipboard) navigator.clipboard.writeText(pre.textContent);
        t.textContent = "copied";
      } else if (t.hasAttribute("data-back")) {
        // not a javascript: link, which the Content-Security-Policy blocks
        history.back();
      } else if (t.id === "select-all") {
        document.querySelectorAll("input[name=ids]").forEach(function (x) { x.checked = t.checked; });
      }
    });
    // live refresh: skipped while paused or while the tab is hidden
    document.body.addEventListener("htmx:beforeRequest", function (ev) {
      if (ev.detail.elt && ev.detail.elt.hasAttribute("data-live") &&
          (paused || document.visibilityState !== "visible")) {
        ev.preventDefault();
      }
    });
    document.body.addEventListener("htmx:afterSwap", function (ev) { applyTz(ev.detail.target); });
  });
})();
