// The Email Automation page: trigger a job, show the answer, keep the status fresh,
// offer "Run again after the current job" when the job is running, show the last run.
// Clicks are handled one after another (each waits for the previous answer), so two
// quick clicks show the success first and then the conflict. End users read words, never
// job ids (the admin page shows those); a message about a job follows that job's state and
// goes once the job has ended.
(function () {
  "use strict";
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const button = document.getElementById("trigger");
  const message = document.getElementById("message");
  const history = document.getElementById("history");
  const statusEl = document.getElementById("job-status");
  const automationEl = document.getElementById("automation");
  const lastRunEl = document.getElementById("last-run");
  const offer = document.getElementById("follow-up-offer");
  const followUpButton = document.getElementById("follow-up");
  let chain = Promise.resolve();
  let timer = null;
  // The jobs the current message is about: when none of them is pending any more, the
  // message has become untrue and is cleared (the history keeps it).
  let messageJobs = [];
  // When the cooldown the current message speaks of ends (ms since epoch), else 0.
  let cooldownUntil = 0;

  function parts(js) {
    const out = [];
    if (js && js.has_running_job) out.push("running");
    if (js && js.has_scheduled_job) out.push("scheduled");
    if (js && js.has_queued_job) out.push("queued");
    if (js && js.has_deferred_job) out.push("deferred");
    return out.length ? out.join(", ") : "unknown";
  }

  function show(text, kind, jobs) {
    message.textContent = text;
    message.className = "message " + kind;
    message.dataset.kind = kind;
    messageJobs = (jobs || []).filter(Boolean);
    const item = document.createElement("li");
    item.textContent = new Date().toLocaleTimeString() + " — " + text;
    item.className = kind;
    item.dataset.kind = kind;
    history.appendChild(item);
  }

  async function readJson(response) {
    try { return await response.json(); } catch (e) { return {}; }
  }

  async function post(url) {
    try {
      const response = await fetch(url, {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-CSRF-Token": csrf, "Accept": "application/json" },
      });
      return { response: response, body: await readJson(response) };
    } catch (e) {
      show("Could not reach the server: " + e.message, "error");
      return null;
    }
  }

  // The offer makes sense only while the job runs and no follow-up waits yet.
  function setOffer(js) {
    offer.hidden = !(js && js.has_running_job && !js.follow_up_job_id);
  }

  function otherAnswer(response, body) {
    if (response.status === 401) {
      show("Your session has ended; please sign in again.", "error");
    } else {
      show(body.error || ("Request failed (HTTP " + response.status + ")."), "error");
    }
  }

  function conflictText(js) {
    if (js && js.follow_up_job_id) {
      return "Your email processing job is running, and a follow-up run is already waiting: " +
             "it will start when the current job ends.";
    }
    return "An email processing job is already pending for your account. Status: " + parts(js) + ".";
  }

  // 429: the last run ended less than the cooldown ago. Says when the next run is possible
  // (the server's time, shown in the browser's time zone).
  function cooldownText(iso) {
    return "Email processing ran a moment ago. The next run is possible at " +
           new Date(iso).toLocaleTimeString() + ".";
  }

  async function trigger() {
    const answer = await post("/api/email-automation/trigger");
    if (!answer) return;
    const response = answer.response, body = answer.body;
    if (response.status === 202 && body.success) {
      show("Email processing started.", "success", [body.job_id]);
    } else if (response.status === 409) {
      const js = body.job_status || {};
      show(conflictText(js), "conflict", [js.job_id, js.follow_up_job_id]);
      setOffer(js);
    } else if (response.status === 429 && body.reason === "cooldown") {
      show(cooldownText(body.retry_after), "cooldown");
      cooldownUntil = new Date(body.retry_after).getTime();
    } else {
      otherAnswer(response, body);
    }
    refresh();
  }

  async function followUp() {
    offer.hidden = true;
    const answer = await post("/api/email-automation/follow-up");
    if (!answer) return;
    const response = answer.response, body = answer.body;
    if (response.status === 202 && body.success) {
      if (body.retry_after) {  // waits out the cooldown, scheduled
        show("Email processing is scheduled for " + new Date(body.retry_after).toLocaleTimeString() +
             ", when the cooldown ends.", "success", [body.job_id]);
      } else if (body.follow_up_of) {
        show("A follow-up run will start when the current job ends.", "success", [body.follow_up_of, body.job_id]);
      } else {  // the job ended meanwhile: this run starts now
        show("Email processing started.", "success", [body.job_id]);
      }
    } else if (response.status === 409) {
      const js = body.job_status || {};
      const text = body.reason === "coalesced" ? conflictText(js) : body.error + ".";
      show(text, "conflict", [js.job_id, js.follow_up_job_id, body.follow_up_job_id]);
    } else {
      otherAnswer(response, body);
    }
    refresh();
  }

  const STATES = {
    queued: "is waiting for a worker", running: "is running", scheduled: "is scheduled",
    deferred: "will start after the current one", rate_limited: "is waiting for its turn",
  };

  function describe(js) {
    if (!js || !js.pending) return "No email processing job is pending.";
    let text = "Your email processing job " + (STATES[js.state] || "is pending");
    if (js.state === "scheduled" && js.scheduled_for) text += " for " + new Date(js.scheduled_for).toLocaleString();
    if (js.state === "running" && js.started_at) text += " since " + new Date(js.started_at).toLocaleTimeString();
    text += ".";
    if (js.follow_up_job_id) text += " A follow-up run is waiting: it will start when this one ends.";
    return text;
  }

  // Keep the message true: a conflict is re-worded as its job moves on (queued, running,
  // a follow-up waiting); any message whose jobs are all over is cleared.
  function followState(js) {
    if (message.dataset.kind === "cooldown" && cooldownUntil && Date.now() >= cooldownUntil) {
      message.textContent = "";  // the next run is possible now
      message.className = "message";
      message.dataset.kind = "";
      cooldownUntil = 0;
    }
    if (!messageJobs.length) return;
    const live = js && js.pending ? [js.job_id, js.follow_up_job_id].filter(Boolean) : [];
    if (!messageJobs.some(function (id) { return live.includes(id); })) {
      message.textContent = "";
      message.className = "message";
      message.dataset.kind = "";
      messageJobs = [];
    } else if (message.dataset.kind === "conflict") {
      message.textContent = conflictText(js);
      messageJobs = live;
    }
  }

  // "2 minutes ago" from an ISO-8601 time (the Redis server's clock; a browser clock
  // slightly ahead or behind only shifts the wording, never below "just now").
  function ago(iso) {
    const seconds = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
    if (seconds < 5) return "just now";
    const units = [["day", 86400], ["hour", 3600], ["minute", 60], ["second", 1]];
    for (const [name, size] of units) {
      if (seconds >= size) {
        const n = Math.floor(seconds / size);
        return n + " " + name + (n === 1 ? "" : "s") + " ago";
      }
    }
    return "just now";
  }

  const OUTCOMES = {
    finished: "finished", failed: "failed", stopped: "was stopped", canceled: "was canceled",
    dead: "was interrupted (its worker died)", gone: "ended",
  };

  function describeLastRun(last) {
    if (!last) return "Last run: none yet.";
    const outcome = OUTCOMES[last.status] || last.status;
    return "Last run: " + outcome + (last.ended_at ? " " + ago(last.ended_at) : "") + ".";
  }

  function describeAutomation(a) {
    if (!a) return "Automatic checks are not set up for this account.";
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
        const last = body.job_status ? body.job_status.last_run : null;
        lastRunEl.textContent = describeLastRun(last);
        lastRunEl.dataset.status = last ? last.status : "none";
        lastRunEl.dataset.jobId = last ? last.job_id : "";
        lastRunEl.title = last && last.ended_at ? new Date(last.ended_at).toLocaleString() : "";
        statusEl.dataset.followUp = (body.job_status && body.job_status.follow_up_job_id) || "";
        if (!(body.job_status && body.job_status.has_running_job && !body.job_status.follow_up_job_id)) {
          offer.hidden = true;  // never offered for a job that is not running
        }
        pending = Boolean(body.job_status && body.job_status.pending);
        followState(body.job_status);
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
  followUpButton.addEventListener("click", function () { chain = chain.then(followUp); });
  refresh();
})();
