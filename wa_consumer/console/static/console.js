// wa-consumer console: progressive enhancement only; every page works without this file.
// 1. A form button with data-confirm asks first.
// 2. A running replay job's page updates its progress in place from /api/jobs/{id}, and
//    reloads when the job changes phase (the forms it offers change with it).
"use strict";

document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-confirm]");
  if (button && !window.confirm(button.dataset.confirm)) event.preventDefault();
  const back = event.target.closest("[data-back]");
  if (back && window.history.length > 1) { event.preventDefault(); window.history.back(); }
});

(function followJob() {
  const box = document.getElementById("job");
  if (!box) return;
  const id = box.dataset.job;
  const started = box.dataset.phase;
  const set = (name, value) => {
    const el = box.querySelector(`[data-field="${name}"]`);
    if (el) el.textContent = value;
  };
  async function tick() {
    let job;
    try {
      const answer = await fetch(`/api/jobs/${encodeURIComponent(id)}`, { credentials: "same-origin" });
      if (!answer.ok) return;
      job = await answer.json();
    } catch (_) { return; }
    const pendingBefore = box.querySelectorAll(".outcome-pending").length;
    if (job.phase !== started || job.canary_outcomes.pending !== pendingBefore) {
      window.location.reload();
      return;
    }
    set("canary_replayed", job.canary_replayed);
    set("replayed", job.progress.replayed);
    set("seen", job.progress.seen);
    set("total", job.progress.total);
    const bar = box.querySelector('[data-field="bar"]');
    if (bar) { bar.max = job.progress.total || 1; bar.value = job.progress.seen; }
  }
  const live = ["canary", "running"].includes(started) || box.querySelector(".outcome-pending");
  if (live) window.setInterval(tick, 2000);
})();
