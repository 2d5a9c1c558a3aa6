// celeriac dashboard: live refresh of the page's content and actions sent with fetch.
//
// The pages are complete without this script (forms post to the API themselves).
// With it: an EventSource on /api/stream says when anything changed, and the page
// re-fetches its own content block (?fragment=1) at most once a second, keeping
// what the operator is typing, where the focus is and which <details> are open.
// Action forms are sent as JSON with the CSRF header, and answered with a flash.
"use strict";
(function () {
  const content = document.getElementById("content");
  const live = document.getElementById("live");
  const flashBox = document.getElementById("flash");
  const token = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  const MIN_GAP = 1000; // ms between two refreshes, whatever the event rate
  let version = null, lastRefresh = 0, timer = null, running = false, again = false;

  function fragmentUrl() {
    const url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    return url.toString();
  }

  // What a refresh must carry over: typed values, focus, open <details>.
  function fieldKey(el) {
    const form = el.form || el.closest("form");
    return (form ? form.getAttribute("action") + "|" : "") + el.name;
  }
  function detailsKey(el) {
    if (el.dataset.key) return el.dataset.key;
    const form = el.querySelector("form[action]");
    return form ? form.getAttribute("action") : null;
  }

  function swap(html) {
    const active = document.activeElement;
    const focusKey = active && content.contains(active) && active.name ? fieldKey(active) : null;
    const selection = focusKey && typeof active.selectionStart === "number"
      ? [active.selectionStart, active.selectionEnd] : null;
    const typed = new Map();
    content.querySelectorAll("[data-dirty]").forEach((el) => typed.set(fieldKey(el), el.value));
    const open = new Set();
    content.querySelectorAll("details[open]").forEach((el) => {
      const key = detailsKey(el);
      if (key !== null) open.add(key);
    });
    // Forms marked data-live-skip (searches, filters) are kept as they are.
    const kept = Array.from(content.querySelectorAll("[data-live-skip]"));
    content.innerHTML = html;
    content.querySelectorAll("[data-live-skip]").forEach((el, i) => {
      if (kept[i]) el.replaceWith(kept[i]);
    });
    content.querySelectorAll("details").forEach((el) => {
      const key = detailsKey(el);
      if (key !== null && open.has(key)) el.open = true;
    });
    content.querySelectorAll("input[name], select[name], textarea[name]").forEach((el) => {
      const key = fieldKey(el);
      if (typed.has(key) && el.type !== "hidden") {
        el.value = typed.get(key);
        el.dataset.dirty = "1";
      }
      if (key === focusKey) {
        el.focus();
        if (selection && typeof el.setSelectionRange === "function") {
          try { el.setSelectionRange(selection[0], selection[1]); } catch (e) { /* type without selection */ }
        }
      }
    });
  }

  async function refresh() {
    if (running) { again = true; return; }
    running = true;
    lastRefresh = Date.now();
    try {
      const response = await fetch(fragmentUrl(), { credentials: "same-origin",
                                                    headers: { Accept: "text/html" } });
      if (response.status === 401) return; // signed out: leave the page as it is
      swap(await response.text());
      document.dispatchEvent(new CustomEvent("celeriac:refreshed"));
    } catch (error) {
      live.classList.remove("on");
    } finally {
      running = false;
      if (again) { again = false; schedule(); }
    }
  }

  function schedule() {
    if (timer !== null || document.hidden) return;
    const wait = Math.max(0, MIN_GAP - (Date.now() - lastRefresh));
    timer = setTimeout(() => { timer = null; refresh(); }, wait);
  }

  function listen() {
    if (!window.EventSource) return;
    const stream = new EventSource("/api/stream");
    stream.onopen = () => live.classList.add("on");
    stream.onerror = () => live.classList.remove("on");
    stream.onmessage = (event) => {
      let data;
      try { data = JSON.parse(event.data); } catch (e) { return; }
      live.classList.add("on");
      if (typeof data.lag === "number") live.title = "live; events " + data.lag.toFixed(2) + " s behind";
      if (version !== null && data.version !== version) schedule();
      version = data.version;
    };
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && version !== null) schedule();
  });
  content.addEventListener("input", (event) => {
    if (event.target.name) event.target.dataset.dirty = "1";
  });

  function flash(message, isError, link) {
    const box = document.createElement("div");
    box.className = "msg" + (isError ? " err" : "");
    box.textContent = message;
    if (link) {
      const a = document.createElement("a");
      a.href = link.href;
      a.textContent = " " + link.text;
      box.appendChild(a);
    }
    flashBox.appendChild(box);
    setTimeout(() => box.remove(), isError ? 8000 : 4000);
  }

  // A form's fields as the JSON body the API takes.
  function body(form) {
    const data = {};
    for (const el of form.elements) {
      if (!el.name || el.name === "csrf_token" || el.tagName === "BUTTON") continue;
      const kind = el.dataset.type;
      if (kind === "bool") data[el.name] = el.value === "true";
      else if (el.type === "checkbox") data[el.name] = el.checked;
      else if (kind === "json") data[el.name] = JSON.parse(el.value);
      else if (el.type === "number") { if (el.value !== "") data[el.name] = Number(el.value); }
      else if (el.value !== "") data[el.name] = el.value;
    }
    return data;
  }

  function failure(response, data) {
    if (data && typeof data === "object") {
      const text = data.error || data.detail || data.message;
      if (text) return typeof text === "string" ? text : JSON.stringify(text);
    }
    return response.status + " " + response.statusText;
  }

  // A search leaves its empty fields out of the address, so a link to it stays short.
  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (!form.matches("form.search")) return;
    event.preventDefault();
    const params = new URLSearchParams();
    for (const [name, value] of new FormData(form)) {
      if (value !== "") params.append(name, value);
    }
    const query = params.toString();
    window.location.assign(form.getAttribute("action") + (query ? "?" + query : ""));
  });

  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (!form.matches("form.action")) return;
    event.preventDefault();
    const button = event.submitter || form.querySelector("button[type=submit]");
    const question = (button && button.dataset.confirm) || form.dataset.confirm;
    if (question && !window.confirm(question)) return;
    if (form.dataset.match !== undefined && form.elements.confirm.value !== form.dataset.match) {
      flash("Type " + form.dataset.match + " exactly to confirm", true);
      return;
    }
    const url = (button && button.getAttribute("formaction")) || form.getAttribute("action");
    if (button) button.disabled = true;
    try {
      const response = await fetch(url, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "application/json",
                   "X-CSRF-Token": token },
        body: JSON.stringify(body(form)),
      });
      let data = null;
      try { data = await response.json(); } catch (e) { /* not JSON */ }
      if (!response.ok) { flash(failure(response, data), true); return; }
      const id = data && (data.task_id || data.id);
      const here = window.location.pathname;
      const link = typeof id === "string" && here.startsWith("/tasks/") && !here.endsWith("/" + id)
        ? { href: "/tasks/" + encodeURIComponent(id), text: "open " + id.slice(0, 8) } : null;
      flash(form.dataset.flash || "Done", false, link);
      form.querySelectorAll("[data-dirty]").forEach((el) => delete el.dataset.dirty);
      refresh();
    } catch (error) {
      flash("Request failed: " + error, true);
    } finally {
      if (button) button.disabled = false;
    }
  });

  listen();
})();
