// Uploads for the web app: file and folder pickers and drag and drop, through the API's
// resumable uploads. Each file's session id is kept in localStorage (by destination, size
// and modification time), so an upload interrupted by a network drop or a reload resumes
// at the offset the server reports instead of starting over. No inline script anywhere:
// the Content-Security-Policy forbids it.
"use strict";
(function () {
  // Parts are sized to take about PART_SECONDS at the rate the last one went: big parts on
  // a fast link (fewer round trips and fsyncs), small ones on a slow link (each must
  // arrive within the server's body deadline). What arrived of a cut part is kept anyway.
  const MIN_PART = 1024 * 1024;
  const MAX_PART = 64 * 1024 * 1024;
  const PART_SECONDS = 8;
  const RETRY_STATUS = new Set([408, 429, 502, 503, 504]);
  const RETRIES = 60;
  const queue = [];
  let running = false;
  let total = 0;
  let settled = 0;
  const inflight = new Map();

  const csrf = () => document.body.dataset.csrf || "";
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const sessionKey = (dest, file) => `drive-upload:${dest}:${file.size}:${file.lastModified}`;

  class HttpError extends Error {
    constructor(x) {
      let message = `${x.status}`;
      try { message = JSON.parse(x.responseText).message || message; } catch (e) { /* not JSON */ }
      super(message);
      this.status = x.status;
    }
  }

  function send(method, url, headers, body, onProgress) {
    return new Promise((resolve, reject) => {
      const x = new XMLHttpRequest();
      x.open(method, url);
      x.setRequestHeader("X-CSRF-Token", csrf());
      for (const [k, v] of Object.entries(headers)) x.setRequestHeader(k, v);
      if (onProgress) x.upload.onprogress = (e) => onProgress(e.loaded);
      x.onload = () => resolve(x);
      x.onerror = () => reject(new TypeError("network error"));
      x.onabort = () => reject(new TypeError("aborted"));
      x.send(body);
    });
  }

  function received(x, size) {
    if (x.status === 200 || x.status === 201) return size;
    if (x.status !== 308) throw new HttpError(x);
    const range = x.getResponseHeader("Range");
    return range ? parseInt(range.split("-")[1], 10) + 1 : 0;
  }

  async function offsetOf(sid, size) {
    const x = await send("PUT", `/web/upload/sessions/${encodeURIComponent(sid)}`,
      { "Content-Range": `bytes */${size}` }, null);
    if (x.status === 404) return null;
    return received(x, size);
  }

  async function start(dest, size) {
    const url = `/web/upload?path=${encodeURIComponent(dest)}&uploadType=resumable`;
    const x = await send("POST", url, { "X-Upload-Content-Length": String(size) }, null);
    if (x.status !== 200) throw new HttpError(x);
    return JSON.parse(x.responseText).session_id;
  }

  function row(dest, size) {
    const list = document.getElementById("upload-list");
    const li = document.createElement("li");
    const label = document.createElement("label");
    const bar = document.createElement("progress");
    const note = document.createElement("span");
    const id = `up-${list.children.length}`;
    bar.id = id;
    bar.max = Math.max(size, 1);
    bar.value = 0;
    label.htmlFor = id;
    label.textContent = dest;
    note.className = "upload-status";
    li.append(label, bar, note);
    list.append(li);
    return {
      progress(n) { bar.value = n; inflight.set(id, n); overall(); },
      note(text) { note.textContent = text; },
      done(n) { bar.value = Math.max(n, 1); inflight.delete(id); settled += n; li.classList.add("done"); overall(); },
    };
  }

  function overall() {
    let now = settled;
    for (const n of inflight.values()) now += n;
    const bar = document.getElementById("overall");
    bar.max = Math.max(total, 1);
    bar.value = Math.min(now, total);
    document.getElementById("overall-status").textContent =
      `${Math.round((100 * now) / Math.max(total, 1))} %`;
  }

  async function uploadOne(file, dest, ui) {
    if (file.size === 0) {
      const x = await send("POST", `/web/upload?path=${encodeURIComponent(dest)}&uploadType=media`, {}, file);
      if (x.status !== 200 && x.status !== 201) throw new HttpError(x);
      return;
    }
    const key = sessionKey(dest, file);
    let sid = localStorage.getItem(key);
    let offset = 0;
    if (sid) {
      const at = await offsetOf(sid, file.size);
      if (at === null) sid = null;
      else if (at > 0) { offset = at; ui.note(`Resumed at ${offset} bytes`); }
    }
    if (!sid) { sid = await start(dest, file.size); localStorage.setItem(key, sid); }
    const url = `/web/upload/sessions/${encodeURIComponent(sid)}`;
    let failures = 0;
    let part = 8 * MIN_PART;
    while (offset < file.size) {
      const end = Math.min(offset + part, file.size);
      const from = offset;
      const began = performance.now();
      try {
        const x = await send("PUT", url, { "Content-Range": `bytes ${from}-${end - 1}/${file.size}` },
          file.slice(from, end), (n) => ui.progress(from + n));
        if (RETRY_STATUS.has(x.status)) throw new TypeError(`server busy (${x.status})`);
        offset = received(x, file.size);
        failures = 0;
        ui.progress(offset);
        const rate = (end - from) / Math.max((performance.now() - began) / 1000, 0.001);
        part = Math.min(MAX_PART, Math.max(MIN_PART, Math.round(rate * PART_SECONDS)));
      } catch (err) {
        if (!(err instanceof TypeError) || ++failures > RETRIES) throw err;
        ui.note(`Connection lost at ${offset} bytes: retrying`);
        await sleep(Math.min(1000 * failures, 5000));
        try {
          const at = await offsetOf(sid, file.size);
          if (at === null) throw new Error("the upload session expired: upload the file again");
          offset = at;
          ui.note(`Resumed at ${offset} bytes`);
        } catch (again) { if (!(again instanceof TypeError)) throw again; }
      }
    }
    localStorage.removeItem(key);
  }

  async function drain() {
    if (running) return;
    running = true;
    document.getElementById("uploads").hidden = false;
    while (queue.length) {
      const { file, dest } = queue.shift();
      const ui = row(dest, file.size);
      try {
        await uploadOne(file, dest, ui);
        ui.done(file.size);
        ui.note("Done");
      } catch (err) {
        ui.done(0);
        ui.note(`Failed: ${err.message}`);
      }
    }
    running = false;
    htmx.trigger(document.body, "drive-changed");
  }

  function join(folder, rel) {
    return (folder === "/" ? "" : folder) + "/" + rel.replace(/^\/+/, "");
  }

  function enqueue(file, rel) {
    const folder = document.getElementById("dropzone").dataset.folder;
    queue.push({ file, dest: join(folder, rel) });
    total += file.size;
    overall();
    drain();
  }

  function entryFiles(entry) {
    if (entry.isFile) {
      return new Promise((resolve) => entry.file((f) => { enqueue(f, entry.fullPath); resolve(); }, () => resolve()));
    }
    const reader = entry.createReader();
    return new Promise((resolve) => {
      const more = () => reader.readEntries(async (entries) => {
        if (!entries.length) { resolve(); return; }
        for (const e of entries) await entryFiles(e);
        more();
      }, () => resolve());
      more();
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const zone = document.getElementById("dropzone");
    if (!zone) return;
    for (const id of ["pick-files", "pick-folder"]) {
      const input = document.getElementById(id);
      input.addEventListener("change", () => {
        for (const f of input.files) enqueue(f, f.webkitRelativePath || f.name);
        input.value = "";
      });
    }
    zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      for (const item of e.dataTransfer.items) {
        const entry = item.webkitGetAsEntry && item.webkitGetAsEntry();
        if (entry) entryFiles(entry);
        else if (item.kind === "file") enqueue(item.getAsFile(), item.getAsFile().name);
      }
    });
  });
})();
