// The page at "/" of the speaker service: plain JavaScript, no build step, no third-party code.
// It calls the same API as any client (/readyz, /v1/...), with the key typed in the page; live
// diarization streams the microphone as 16-bit samples over the WebSocket /v1/diarize/stream.
// Microphone recordings (MediaRecorder: WebM/Opus in Chrome, Ogg/Opus in Firefox, MP4 in Safari)
// are decoded by the browser and sent as 16 kHz mono 16-bit WAV, which the service reads on any
// install; chosen files are sent as they are (any format the service decodes).
"use strict";

const $ = (id) => document.getElementById(id);
const WAV_RATE = 16000;
const MAX_RECORDING_S = 60;
let chosen = [];          // [{blob, name}]: what enrol sends (all), verify, identify and diarize (the first)
let recorder = null;      // the MediaRecorder while recording

class PageError extends Error {}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function show(state, ...nodes) {
  const result = $("result");
  result.dataset.state = state;
  result.replaceChildren(...nodes);
}

function showError(error) {
  show("error", element("div", error instanceof PageError ? error.message : `error: ${error.message || error}`));
}

async function call(method, path, form) {
  const key = $("key").value.trim();
  if (!key) throw new PageError("Type an API key first (section 1).");
  let response;
  try {
    response = await fetch(path, { method, body: form, headers: { Authorization: `Bearer ${key}` } });
  } catch (error) {
    throw new PageError(`the server did not answer (${error.message})`);
  }
  let body = null;
  try { body = await response.json(); } catch (ignored) { /* not JSON: said below */ }
  if (!response.ok) {
    const error = (body && body.error) || { code: `http_${response.status}`, message: response.statusText };
    const retry = response.headers.get("Retry-After");
    throw new PageError(`${response.status} ${error.code}: ${error.message}${retry ? ` (retry in ${retry} s)` : ""}`);
  }
  return body;
}

function busy(on) {
  for (const id of ["enrol", "verify", "identify", "diarize", "check", "list"]) $(id).disabled = on;
}

async function run(label, work) {
  busy(true);
  show("busy", element("span", `${label}...`, "muted"));
  try {
    await work();
  } catch (error) {
    showError(error);
  } finally {
    busy(false);
  }
}

// --- what is sent ---------------------------------------------------------------------------------

function setChosen(items, description) {
  chosen = items;
  $("chosen").textContent = description;
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.hidden = items.length === 0;
  if (items.length) preview.src = URL.createObjectURL(items[0].blob);
}

function recording() {
  if (!chosen.length) throw new PageError("Record something or choose a file first (section 2).");
  return chosen;
}

function speakerName() {
  const name = $("speaker").value.trim();
  if (!name) throw new PageError("Type a speaker name first (section 3).");
  return name;
}

$("file").addEventListener("change", () => {
  const files = Array.from($("file").files);
  const names = files.map((f) => f.name).join(", ");
  setChosen(files.map((f) => ({ blob: f, name: f.name })),
            files.length > 1 ? `${files.length} files: ${names} (enrol sends all; the others the first)`
                             : files.length ? `file: ${names}` : "nothing chosen yet");
});

// --- the microphone -------------------------------------------------------------------------------

function wavBytes(samples, rate) {
  const view = new DataView(new ArrayBuffer(44 + samples.length * 2));
  const text = (offset, s) => { for (let i = 0; i < s.length; i++) view.setUint8(offset + i, s.charCodeAt(i)); };
  text(0, "RIFF"); view.setUint32(4, 36 + samples.length * 2, true); text(8, "WAVE");
  text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, rate * 2, true); view.setUint16(32, 2, true);
  view.setUint16(34, 16, true); text(36, "data"); view.setUint32(40, samples.length * 2, true);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    view.setInt16(44 + 2 * i, s < 0 ? s * 0x8000 : s * 0x7fff, true);
  }
  return new Blob([view.buffer], { type: "audio/wav" });
}

async function toWav(blob) {
  const context = new AudioContext();
  let decoded;
  try {
    decoded = await context.decodeAudioData(await blob.arrayBuffer());
  } finally {
    context.close();
  }
  const frames = Math.max(1, Math.ceil(decoded.duration * WAV_RATE));
  const offline = new OfflineAudioContext(1, frames, WAV_RATE);  // resampled and mixed to mono
  const source = offline.createBufferSource();
  source.buffer = decoded;
  source.connect(offline.destination);
  source.start();
  const rendered = await offline.startRendering();
  return { wav: wavBytes(rendered.getChannelData(0), WAV_RATE), seconds: rendered.length / WAV_RATE };
}

async function startRecording() {
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    throw new PageError("This browser cannot record here: the microphone needs https (or localhost) " +
                        "and MediaRecorder.");
  }
  let stream;
  try {  // the voice as it is: no echo cancellation, noise suppression or gain control
    stream = await navigator.mediaDevices.getUserMedia(
      { audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
  } catch (error) {
    throw new PageError(`no microphone: ${error.message || error.name}`);
  }
  const chunks = [];
  const started = performance.now();
  recorder = new MediaRecorder(stream);
  const button = $("record");
  const state = $("record-state");
  const ticker = setInterval(() => {
    const seconds = (performance.now() - started) / 1000;
    state.textContent = `recording: ${seconds.toFixed(1)} s (click Stop)`;
    if (seconds >= MAX_RECORDING_S && recorder) recorder.stop();
  }, 100);
  recorder.addEventListener("dataavailable", (event) => { if (event.data.size) chunks.push(event.data); });
  recorder.addEventListener("stop", async () => {
    clearInterval(ticker);
    stream.getTracks().forEach((track) => track.stop());
    const type = recorder.mimeType;
    recorder = null;
    button.textContent = "\u25CF Record";
    button.classList.remove("recording");
    state.textContent = "converting to WAV...";
    try {
      const { wav, seconds } = await toWav(new Blob(chunks, { type }));
      $("file").value = "";  // the recording replaces any file chosen before
      setChosen([{ blob: wav, name: "recording.wav" }], `recording: ${seconds.toFixed(1)} s from the microphone`);
      state.textContent = "recorded; record again to replace it";
    } catch (error) {
      state.textContent = "";
      showError(new PageError(`the recording could not be decoded: ${error.message || error}`));
    }
  });
  recorder.start();
  button.textContent = "\u25A0 Stop";
  button.classList.add("recording");
}

$("record").addEventListener("click", async () => {
  if (recorder) {
    recorder.stop();
    return;
  }
  try {
    await startRecording();
  } catch (error) {
    showError(error);
  }
});

// --- the calls ------------------------------------------------------------------------------------

function form(fields, files, field) {
  const data = new FormData();
  for (const item of files) data.append(field, item.blob, item.name);
  for (const [name, value] of Object.entries(fields)) data.append(name, value);
  return data;
}

function score(value) {
  return typeof value === "number" ? value.toFixed(3) : String(value);
}

$("enrol").addEventListener("click", () => run("enrolling", async () => {
  const items = recording();
  const name = speakerName();
  const body = await call("POST", `/v1/speakers/${encodeURIComponent(name)}/enrol`, form({}, items, "files"));
  const speaker = body.speaker;
  show("done", element("div", `enrolled ${speaker.id}`, "yes"),
       element("div", `${body.added} recording(s) added (${body.created ? "new speaker" : "added to the speaker"}); ` +
                      `${speaker.utterances} in all`));
  if (!$("speakers").dataset.forbidden) await listSpeakers(false);
}));

$("verify").addEventListener("click", () => run("verifying", async () => {
  const items = recording().slice(0, 1);
  const name = speakerName();
  const body = await call("POST", "/v1/verify", form({ speaker: name }, items, "file"));
  const answer = element("div", body.same_speaker ? `same speaker: ${name}` : `not ${name}`,
                         body.same_speaker ? "yes" : "no");
  answer.id = "answer";
  const detail = `score ${score(body.score)} (${body.score_kind}), threshold ${score(body.threshold)}; ` +
                 `cosine similarity ${score(body.similarity)}`;
  show("done", answer, element("div", detail));
}));

$("identify").addEventListener("click", () => run("identifying", async () => {
  const items = recording().slice(0, 1);
  const body = await call("POST", "/v1/identify", form({ top_k: "3" }, items, "file"));
  const answer = element("div", body.speaker, body.speaker === "unknown" ? "no" : "yes");
  answer.id = "answer";
  const table = element("table");
  const head = table.createTHead().insertRow();
  head.append(element("th", "speaker"), element("th", `score (${body.score_kind})`));
  const rows = table.createTBody();
  for (const match of body.matches) {
    const row = rows.insertRow();
    row.append(element("td", match.speaker), element("td", score(match.score)));
  }
  let note = `best of the enrolled speakers for ${items[0].name}; threshold ${score(body.threshold)}`;
  if (body.speaker === "unknown") {
    note = body.matches.length ? `no enrolled speaker scores above the threshold ${score(body.threshold)}`
                               : "nobody is enrolled yet";
  }
  show("done", element("div", "Who is this?", "muted"), answer, element("div", note, "muted"), table);
}));

// --- who spoke when: the timeline ------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";
const LANE_COLOURS = ["#4a7fcb", "#d9822b", "#2e9d6a", "#b04a8f", "#7a6cc4", "#c0392b", "#2b9fb3", "#8c7a3a"];

function svg(tag, attributes, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function tickStep(seconds) {  // about 5-10 ticks over the recording
  for (const step of [0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600]) {
    if (seconds / step <= 10) return step;
  }
  return 7200;
}

function clock(seconds, step) {
  if (seconds < 60 || step < 60) return step < 1 ? seconds.toFixed(1) : String(Math.round(seconds));
  const minutes = Math.floor(seconds / 60);
  return `${minutes}:${String(Math.round(seconds - 60 * minutes)).padStart(2, "0")}`;
}

// One lane per speaker (in order of first appearance), a bar per turn, and the time axis in seconds.
function timeline(body) {
  const labelWidth = 120, width = 680, plot = width - labelWidth - 10, lane = 28, top = 6;
  const duration = Math.max(body.duration, 0.001);
  const height = top + lane * body.speakers.length + 30;
  const x = (seconds) => labelWidth + (plot * seconds) / duration;
  const root = svg("svg", { id: "timeline", viewBox: `0 0 ${width} ${height}`, role: "img",
                            "aria-label": `who spoke when: ${body.speakers.length} speaker(s)` });
  const step = tickStep(duration);
  const axis = svg("g", { class: "axis" });
  const bottom = top + lane * body.speakers.length;
  for (let t = 0; t <= duration + 1e-6; t += step) {
    axis.append(svg("line", { x1: x(t), x2: x(t), y1: top, y2: bottom + 4, class: "grid" }),
                svg("text", { x: x(t), y: bottom + 17, "text-anchor": "middle" }, clock(t, step)));
  }
  axis.append(svg("text", { x: labelWidth + plot, y: bottom + 29, "text-anchor": "end" }, "time (s)"));
  root.append(axis);
  body.speakers.forEach((speaker, index) => {
    const group = svg("g", { class: "lane", "data-speaker": speaker });
    const y = top + index * lane;
    const colour = LANE_COLOURS[index % LANE_COLOURS.length];
    const shown = speaker.length > 16 ? `${speaker.slice(0, 15)}\u2026` : speaker;
    group.append(svg("text", { x: labelWidth - 8, y: y + lane / 2 + 4, "text-anchor": "end" }, shown));
    for (const segment of body.segments.filter((s) => s.speaker === speaker)) {
      const bar = svg("rect", { x: x(segment.start), y: y + 4, height: lane - 8, rx: 3, fill: colour,
                                width: Math.max(1, x(segment.end) - x(segment.start)) });
      bar.append(svg("title", {}, `${speaker}: ${segment.start.toFixed(2)}-${segment.end.toFixed(2)} s`));
      group.append(bar);
    }
    root.append(group);
  });
  return root;
}

$("diarize").addEventListener("click", () => run("diarizing", async () => {
  const items = recording().slice(0, 1);
  const count = $("num-speakers").value.trim();
  if (count && !/^[1-9][0-9]*$/.test(count)) {
    throw new PageError("The number of speakers is a whole number from 1 (or empty: estimated).");
  }
  const body = await call("POST", "/v1/diarize", form(count ? { num_speakers: count } : {}, items, "file"));
  const title = element("div", `Who spoke when? ${items[0].name}, ${body.duration.toFixed(1)} s`, "muted");
  if (!body.segments.length) {
    const answer = element("div", "nobody: no speech", "no");
    answer.id = "answer";
    show("done", title, answer, element("div", body.reason || "", "muted"));
    return;
  }
  const answer = element("div", `${body.num_speakers} speaker(s)`, "yes");
  answer.id = "answer";
  const enrolled = body.speakers.filter((s) => !/^speaker_[0-9]+$/.test(s));
  const note = `${body.segments.length} turn(s), ${body.speech.toFixed(1)} s of speech; ` +
               (enrolled.length ? `enrolled: ${enrolled.join(", ")}` : "nobody enrolled among them") +
               (count ? `; ${count} speaker(s) asked for` : "; the number of speakers estimated");
  show("done", title, answer, element("div", note, "muted"), timeline(body));
}));

$("check").addEventListener("click", () => run("checking the key", async () => {
  const body = await call("GET", "/readyz");
  $("key-state").textContent = `key accepted: model ${body.model_sha256.slice(0, 12)}, runtime ${body.runtime}, ` +
                               `${body.workers} worker(s)`;
  show("idle", element("span", "the service is ready", "muted"));
  await listSpeakers(false);
}));

async function listSpeakers(loud) {
  const list = $("speakers");
  let body;
  try {
    body = await call("GET", "/v1/speakers?limit=100");
  } catch (error) {
    list.dataset.forbidden = error.message.startsWith("403") ? "yes" : "";
    list.replaceChildren(element("li", error.message, "muted"));
    if (loud) throw error;
    return;
  }
  list.dataset.forbidden = "";
  const items = body.speakers.map((speaker) => {
    const shown = speaker.name && speaker.name !== speaker.id ? `${speaker.id} (${speaker.name})` : speaker.id;
    const item = element("li", `${shown}: ${speaker.utterances} recording(s)`);
    const erase = element("button", "Delete", "small");
    erase.type = "button";
    erase.addEventListener("click", () => run(`deleting ${speaker.id}`, async () => {
      if (!window.confirm(`Erase ${speaker.id} and all its embeddings?`)) { show("idle"); return; }
      const done = await call("DELETE", `/v1/speakers/${encodeURIComponent(speaker.id)}`);
      show("done", element("div", `deleted ${done.deleted} (${done.utterances} embedding(s) erased)`));
      await listSpeakers(false);
    }));
    item.append(erase);
    return item;
  });
  if (body.next) items.push(element("li", "... (the first 100 shown)", "muted"));
  list.replaceChildren(...(items.length ? items : [element("li", "nobody is enrolled yet", "muted")]));
}

$("list").addEventListener("click", () => run("listing", async () => {
  await listSpeakers(true);
  show("idle", element("span", "list refreshed", "muted"));
}));

// --- live: who is speaking, as it happens (WebSocket /v1/diarize/stream) ---------------------------

const LIVE_IDLE_TEXT = "the microphone, diarized as you speak (each turn a second or a few after it ends)";
let live = null;  // the session while starting, streaming or stopping: one at a time

function liveView(body, now) {
  const title = element("div", `Live: ${body.duration.toFixed(1)} s heard`, "muted");
  const answer = element("div", now, "yes");
  answer.id = "answer";
  const note = element("div", `${body.segments.length} turn(s) final; ${body.speakers.length} speaker(s) so far`,
                       "muted");
  return body.segments.length ? [title, answer, note, timeline(body)] : [title, answer, note];
}

function liveButton(streaming) {
  $("live").textContent = streaming ? "\u25A0 Stop" : "\u25CF Live: who is speaking?";
  $("live").classList.toggle("recording", streaming);
  if (!streaming) $("live-state").textContent = LIVE_IDLE_TEXT;
}

// Everything one live session holds; its handlers see only their own session, so a late message of an
// old socket cannot touch a new one.
async function startLive(session) {
  const key = $("key").value.trim();
  if (!key) throw new PageError("Type an API key first (section 1).");
  if (!navigator.mediaDevices || !window.WebSocket) throw new PageError("This browser cannot stream the microphone.");
  try {
    session.media = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: false,
                                                                         noiseSuppression: false,
                                                                         autoGainControl: false } });
  } catch (error) {
    throw new PageError(`no microphone: ${error.message}`);
  }
  if (session.state === "stopping") { releaseAudio(session); return; }  // Stop while the browser asked
  session.context = new AudioContext({ sampleRate: WAV_RATE });  // the browser resamples the microphone
  const source = session.context.createMediaStreamSource(session.media);
  session.processor = session.context.createScriptProcessor(4096, 1, 1);
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/v1/diarize/stream`);
  session.socket = socket;
  const body = { duration: 0, speakers: [], segments: [] };
  const names = {};      // speaker_N -> the enrolled name it was recognised as
  let finished = false;  // "done" or "error" came
  show("busy", element("span", "live: connecting...", "muted"));
  socket.onopen = () => {
    if (session.state === "stopping") { socket.close(); return; }  // Stop before the server answered
    socket.send(JSON.stringify({ key, sample_rate: session.context.sampleRate }));
  };
  socket.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "ready") {
      if (session.state === "stopping") { socket.send(JSON.stringify({ type: "end" })); return; }
      session.state = "listening";
      $("live-state").textContent = "live: listening (speak; Stop ends)";
      show("live", ...liveView(body, "listening..."));
    } else if (message.type === "turn") {
      const speaker = names[message.speaker] || message.speaker;
      body.segments.push({ start: message.start, end: message.end, speaker });
      if (!body.speakers.includes(speaker)) body.speakers.push(speaker);
      show(finished ? "done" : "live", ...liveView(body, `last: ${speaker}`));
    } else if (message.type === "name") {  // an enrolled speaker recognised: its lane takes the name
      names[message.speaker] = message.name;
      body.speakers = body.speakers.map((s) => (s === message.speaker ? message.name : s));
      for (const segment of body.segments) if (segment.speaker === message.speaker) segment.speaker = message.name;
      show(finished ? "done" : "live", ...liveView(body, `${message.speaker} is ${message.name}`));
    } else if (message.type === "current") {
      const speaker = message.speaker && (names[message.speaker] || message.speaker);
      show("live", ...liveView(body, speaker ? `now: ${speaker}` : "listening..."));
    } else if (message.type === "done") {
      finished = true;
      const answer = element("div", `${message.num_speakers} speaker(s)`, "yes");
      answer.id = "answer";
      const enrolled = message.speakers.filter((s) => !/^speaker_[0-9]+$/.test(s));
      show("done", element("div", `Live: ${message.duration.toFixed(1)} s`, "muted"), answer,
           element("div", `${body.segments.length} turn(s); ` +
                          (enrolled.length ? `enrolled: ${enrolled.join(", ")}` : "nobody enrolled among them"),
                   "muted"), ...(body.segments.length ? [timeline(body)] : []));
    } else if (message.type === "error") {
      finished = true;
      showError(new PageError(`${message.error.code}: ${message.error.message}`));
    }
  };
  socket.onclose = (event) => {
    if (!finished && session.state !== "stopping") {
      showError(new PageError(`the live stream ended (${event.code}${event.reason ? `: ${event.reason}` : ""})`));
    }
    endSession(session);
  };
  session.processor.onaudioprocess = (event) => {
    if (session.state !== "listening" || socket.readyState !== WebSocket.OPEN) return;
    const samples = event.inputBuffer.getChannelData(0);
    const pcm = new Int16Array(samples.length);
    for (let i = 0; i < samples.length; i += 1) pcm[i] = Math.max(-1, Math.min(1, samples[i])) * 0x7fff;
    socket.send(pcm.buffer);
    body.duration += samples.length / session.context.sampleRate;
  };
  source.connect(session.processor);
  session.processor.connect(session.context.destination);  // (a ScriptProcessor runs only when connected)
}

function releaseAudio(session) {
  if (session.processor) session.processor.disconnect();
  if (session.media) session.media.getTracks().forEach((track) => track.stop());
  if (session.context && session.context.state !== "closed") session.context.close();
}

function stopLive(session) {  // Stop: the microphone off now; the server's last turns and "done" still come
  session.state = "stopping";
  releaseAudio(session);
  const socket = session.socket;
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "end" }));
  endSession(session);
}

function endSession(session) {
  releaseAudio(session);
  if (live === session) { live = null; liveButton(false); }
}

$("live").addEventListener("click", async () => {
  if (live) { stopLive(live); return; }
  const session = { state: "starting" };  // set before any await: a second click stops it, not a second start
  live = session;
  liveButton(true);
  try {
    await startLive(session);
  } catch (error) {
    showError(error);
    endSession(session);
  }
});
