// The Email Automation page: trigger a job, show the answer, keep the status fresh.
// Clicks are handled one after another (each waits for the previous answer), so two
// quick clicks show the success first and then the conflict.
(function () {
  "use strict";
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const button = document.getElementById("trigger");
  const message = document.getElementById("message");
  const history = document.getElementById("history");
  const statusEl = document.getElementById("job-status");
  const automationEl = document.getElementById("automation");
  let chain = Promise.resolve();
  let timer = null;

  function parts(js) {
    const out = [];
    if (js && js.has_running_job) out.push("running");
    if (js && js.has_scheduled_job) out.push("scheduled");
    if (js && js.has_queued_job) out.push("queued");
    if (js && js.has_deferred_job) out.push("deferred");
    return out.length ? out.join(", ") : "unknown";
  }

  function show(text, kind) {
    message.textContent = text;
    message.className = "message " + kind;
    const item = document.createElement("li");
    item.textContent = new Date().toLocaleTimeString() + " — " + text;
    item.className = kind;
    item.dataset.kind = kind;
    history.appendChild(item);
  }

  async function readJson(response) {
    try { return await response.json(); } catch (e) { return {}; }
  }

  async function trigger() {
    let response;
    try {
      response = await fetch("/api/email-automation/trigger", {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-CSRF-Token": csrf, "Accept": "application/json" },
      });
    } catch (e) {
      show("Could not reach the server: " + e.message, "error");
      return;
    }
    const body = await readJson(response);
    if (response.status === 202 && body.success) {
      show("Email processing started (job " + body.job_id + ").", "success");
    } else if (response.status === 409) {
      show("An email processing job is already pending for your account. Status: " + parts(body.job_status) + ".",
           "conflict");
    } else if (response.status === 401) {
      show("Your session has ended; please sign in again.", "error");
    } else {
      show(body.error || ("Request failed (HTTP " + response.status + ")."), "error");
    }
    refresh();
  }

  function describe(js) {
    if (!js || !js.pending) return "No email processing job is pending.";
    let text = "Job " + js.job_id + " is " + js.state;
    if (js.state === "scheduled" && js.scheduled_for) text += " for " + new Date(js.scheduled_for).toLocaleString();
    if (js.state === "running" && js.started_at) text += " since " + new Date(js.started_at).toLocaleTimeString();
    return text + ".";
  }

  function describeAutomation(a) {
    if (!a) return "No automation settings.";
    if (!a.enabled) return "Automatic checks are off.";
    const last = a.last_check_time ? new Date(a.last_check_time).toLocaleString() : "never";
    return "Every " + a.interval_minutes + " min. Last check: " + last + ".";
  }

  async function refresh() {
    clearTimeout(timer);
    let pending = false;
    try {
      const response = await fetch("/api/email-automation/status", { credentials: "same-origin" });
      const body = await readJson(response);
      if (response.ok) {
        statusEl.textContent = describe(body.job_status);
        statusEl.dataset.state = (body.job_status && body.job_status.state) || "none";
        automationEl.textContent = describeAutomation(body.automation);
        pending = Boolean(body.job_status && body.job_status.pending);
      } else {
        statusEl.textContent = body.error || ("Status unavailable (HTTP " + response.status + ").");
        statusEl.dataset.state = "error";
      }
    } catch (e) {
      statusEl.textContent = "Status unavailable: " + e.message;
      statusEl.dataset.state = "error";
    }
    // Refresh quickly while a job is pending, slowly otherwise.
    timer = setTimeout(refresh, pending ? 1000 : 10000);
  }

  button.addEventListener("click", function () { chain = chain.then(trigger); });
  refresh();
})();
