// The live view: frames and figures over one WebSocket, a rolling latency chart on a canvas.
// Nothing is fetched from anywhere but this server. The page keeps its progress in the DOM
// (body data-shown, #frames, canvas data-points / data-draws) for people and browser tests alike.
"use strict";

const $ = (id) => document.getElementById(id);
const view = $("view");
const chart = $("chart");
let shownUrl = null;
let ended = false;
let retryMs = 500;

function setState(state, text) {
  document.body.dataset.state = state;
  $("state").textContent = text || state;
}

function ms(value) {
  return Number.isFinite(value) ? `${value.toFixed(1)} ms` : "–";
}

function showHello(msg) {
  $("source").textContent = msg.source || "";
  $("model").textContent = msg.model ? `${msg.model} · ${msg.providers || ""}` : "";
  const legend = $("legend");
  legend.replaceChildren();
  for (const c of msg.classes || []) {
    const item = document.createElement("li");
    const swatch = document.createElement("i");
    swatch.style.background = `rgb(${c.color.join(",")})`;
    item.append(swatch, document.createTextNode(c.name));
    legend.append(item);
  }
}

function showFigures(msg) {
  $("frames").textContent = String(msg.frames);
  $("fps").textContent = msg.fps.toFixed(1);
  $("p50").textContent = ms(msg.p50);
  $("p95").textContent = ms(msg.p95);
  $("latency").textContent = msg.status === "ok" ? ms(msg.latency_ms) : msg.status;
  $("server").textContent = ms(msg.server_ms);
  $("inference").textContent = ms(msg.inference_ms);
  $("batch").textContent = String(msg.batch);
  $("bad").textContent = `${msg.dropped} / ${msg.errors}`;
  drawChart(msg.history || []);
}

function showFrame(blob) {
  const url = URL.createObjectURL(blob);
  view.onload = () => {
    if (shownUrl) URL.revokeObjectURL(shownUrl);
    shownUrl = url;
    document.body.dataset.shown = String(Number(document.body.dataset.shown) + 1);
  };
  view.src = url;
}

// history: [[frame, client latency ms, server ms], ...], oldest first
function drawChart(history) {
  if (chart.clientWidth && chart.width !== chart.clientWidth) chart.width = chart.clientWidth; // crisp
  const ctx = chart.getContext("2d");
  const w = chart.width, h = chart.height;
  const left = 44, right = 8, top = 22, bottom = 20;
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px system-ui, sans-serif";
  const values = history.flatMap((p) => [p[1], p[2]]).filter(Number.isFinite);
  const peak = Math.max(10, ...values);
  const step = niceStep(peak / 4);
  const yMax = Math.ceil(peak / step) * step;
  const y = (v) => top + (h - top - bottom) * (1 - v / yMax);
  const x = (i) => left + (w - left - right) * (history.length > 1 ? i / (history.length - 1) : 0);
  ctx.strokeStyle = "#3a3f45";
  ctx.fillStyle = "#9aa0a6";
  ctx.lineWidth = 1;
  for (let v = 0; v <= yMax + 1e-9; v += step) {
    ctx.beginPath();
    ctx.moveTo(left, y(v));
    ctx.lineTo(w - right, y(v));
    ctx.stroke();
    ctx.fillText(`${v}`, 6, y(v) + 4);
  }
  ctx.fillText("ms", 6, 12);
  if (history.length) {
    ctx.fillText(`frame ${history[0][0]}`, left, h - 5);
    const last = `frame ${history[history.length - 1][0]}`;
    ctx.fillText(last, w - right - ctx.measureText(last).width, h - 5);
  }
  const series = [["capture → result (client)", 1, "#4fc3f7"], ["server total", 2, "#ffb74d"]];
  let legendX = left;
  for (const [label, index, colour] of series) {
    ctx.strokeStyle = colour;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    history.forEach((p, i) => (i ? ctx.lineTo(x(i), y(p[index])) : ctx.moveTo(x(i), y(p[index]))));
    ctx.stroke();
    ctx.fillStyle = colour;
    ctx.fillRect(legendX, 6, 10, 10);
    ctx.fillStyle = "#e8e8e8";
    ctx.fillText(label, legendX + 14, 15);
    legendX += ctx.measureText(label).width + 34;
  }
  chart.dataset.points = String(history.length);
  chart.dataset.draws = String(Number(chart.dataset.draws) + 1);
}

function niceStep(raw) {
  const power = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws`);
  ws.binaryType = "blob";
  ws.onopen = () => { retryMs = 500; setState("live"); };
  ws.onmessage = (event) => {
    if (typeof event.data !== "string") return showFrame(event.data);
    const msg = JSON.parse(event.data);
    if (msg.type === "hello") showHello(msg);
    else if (msg.type === "frame") showFigures(msg);
    else if (msg.type === "end") {
      ended = true;
      $("summary").textContent = msg.summary;
      setState("ended", "stream ended");
    }
  };
  ws.onclose = (event) => {
    if (ended) return;
    setState("disconnected", `disconnected${event.reason ? ": " + event.reason : ""}; retrying`);
    setTimeout(connect, retryMs);
    retryMs = Math.min(retryMs * 2, 8000);
  };
}

drawChart([]);
connect();
