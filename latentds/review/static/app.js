// latentds reader study page. No framework and nothing fetched from elsewhere: it must run
// offline in a reading room. Images arrive as raw 16-bit pixels and are windowed here, so
// window/level works on the full bit depth rather than on an 8-bit PNG rendering.
"use strict";
(function () {
  const KEY = "latentds.review.session";
  const $ = (id) => document.getElementById(id);
  const S = {
    session: localStorage.getItem(KEY), items: null, state: null,
    img: null,            // {w, h, left: Uint16Array, right: Uint16Array}
    off: {},              // side -> offscreen canvas holding the windowed image
    view: {fit: true, zoom: 1, cx: 0, cy: 0},
    wl: {level: 32768, width: 65536},
    t0: 0, busy: false,
  };
  window.latentdsReview = S;  // for debugging from the browser console

  async function api(method, path, body) {
    const headers = {};
    if (S.session) headers["X-Review-Session"] = S.session;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(path, {method, headers, body: body === undefined ? undefined : JSON.stringify(body),
                                 credentials: "same-origin", cache: "no-store"});
    if (!r.ok) {
      let msg = r.status + " " + r.statusText;
      try { msg = (await r.json()).error || msg; } catch (e) { /* not JSON */ }
      const err = new Error(msg); err.status = r.status; throw err;
    }
    return r;
  }

  function show(view) {
    for (const v of ["signin-view", "study-view", "done-view"]) $(v).hidden = v !== view;
    $("signout").hidden = view === "signin-view";
  }

  function setProgress(st) {
    S.state = st;
    $("who").textContent = st.reader ? "Reader: " + st.reader : "";
    const done = st.answered + st.skipped;
    $("progress").hidden = false; $("progress").max = st.total; $("progress").value = done;
    $("progress-text").textContent = st.done ? `${done} of ${st.total} done`
      : `Case ${st.position} of ${st.total} (${st.answered} rated${st.skipped ? ", " + st.skipped + " skipped" : ""})`;
  }

  // ---- rating form ---------------------------------------------------------------------
  function buildItems(items) {
    const box = $("items"); box.textContent = "";
    for (const [key, it] of Object.entries(items)) {
      const fs = document.createElement("fieldset"); fs.id = "item-" + key;
      const lg = document.createElement("legend"); lg.textContent = it.title; fs.appendChild(lg);
      const q = document.createElement("p"); q.className = "question"; q.textContent = it.question; fs.appendChild(q);
      it.anchors.forEach((a, i) => {
        const lab = document.createElement("label"); lab.id = `rate-${key}-${i + 1}`;
        const inp = document.createElement("input"); inp.type = "radio"; inp.name = key; inp.value = String(i + 1);
        inp.addEventListener("change", updateSubmit);
        lab.appendChild(inp); lab.append(` ${i + 1} ${a}`); fs.appendChild(lab);
      });
      box.appendChild(fs);
    }
  }
  function ratings() {
    const out = {};
    for (const key of Object.keys(S.items)) {
      const c = document.querySelector(`input[name="${key}"]:checked`);
      out[key] = c ? Number(c.value) : null;
    }
    return out;
  }
  function updateSubmit() {
    const r = ratings();
    $("submit").disabled = S.busy || !S.img || Object.values(r).some((v) => v === null);
  }
  function resetForm() {
    for (const inp of document.querySelectorAll("#items input")) inp.checked = false;
    $("comment").value = ""; $("submit-error").textContent = "";
    updateSubmit();
  }

  // ---- images --------------------------------------------------------------------------
  async function fetchImage(trial, which) {
    const r = await api("GET", `/api/trial/${encodeURIComponent(trial)}/image/${which}`);
    const w = Number(r.headers.get("X-Image-Width")), h = Number(r.headers.get("X-Image-Height"));
    const buf = await r.arrayBuffer();
    if (!w || !h || buf.byteLength !== w * h * 2) throw new Error(`the ${which} image arrived incomplete; reload the page`);
    return {w, h, px: new Uint16Array(buf)};
  }

  function windowed(px, w, h) {
    const lo = S.wl.level - S.wl.width / 2, scale = 255 / S.wl.width;
    const lut = new Uint8ClampedArray(65536);
    for (let v = 0; v < 65536; v++) lut[v] = (v - lo) * scale;
    const c = document.createElement("canvas"); c.width = w; c.height = h;
    const ctx = c.getContext("2d"); const id = ctx.createImageData(w, h); const d = id.data;
    for (let i = 0, j = 0; i < px.length; i++, j += 4) { const g = lut[px[i]]; d[j] = d[j + 1] = d[j + 2] = g; d[j + 3] = 255; }
    ctx.putImageData(id, 0, 0);
    return c;
  }
  function rewindow() {
    if (!S.img) return;
    S.off.left = windowed(S.img.left, S.img.w, S.img.h);
    S.off.right = windowed(S.img.right, S.img.w, S.img.h);
    draw();
  }

  function canvasSize(c) {  // backing store in device pixels, so "1:1" is one image pixel per screen pixel
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(c.clientWidth * dpr)), h = Math.max(1, Math.round(c.clientHeight * dpr));
    if (c.width !== w || c.height !== h) { c.width = w; c.height = h; }
    return [w, h];
  }
  function fitZoom() {
    const [W, H] = canvasSize($("canvas-left"));
    return Math.min(W / S.img.w, H / S.img.h);
  }
  function draw() {
    for (const side of ["left", "right"]) {
      const c = $("canvas-" + side); const [W, H] = canvasSize(c); const ctx = c.getContext("2d");
      ctx.setTransform(1, 0, 0, 1, 0, 0); ctx.fillStyle = "#000"; ctx.fillRect(0, 0, W, H);
      if (!S.img || !S.off[side]) continue;
      if (S.view.fit) { S.view.zoom = fitZoom(); S.view.cx = S.img.w / 2; S.view.cy = S.img.h / 2; }
      const z = S.view.zoom;
      // at and beyond 1:1 show the pixels themselves (nearest neighbour): calcifications are a few pixels
      ctx.imageSmoothingEnabled = z < 1;
      ctx.setTransform(z, 0, 0, z, W / 2 - S.view.cx * z, H / 2 - S.view.cy * z);
      ctx.drawImage(S.off[side], 0, 0);
    }
    $("zoom-label").textContent = S.img ? Math.round(S.view.zoom * 100) + "%" + (S.view.fit ? " (fit)" : "") : "";
    $("wl-level").value = String(Math.round(S.wl.level)); $("wl-width").value = String(Math.round(S.wl.width));
  }
  function setZoom(z, ax, ay) {  // keep image point under canvas point (ax, ay) fixed; both panels move together
    if (!S.img) return;
    const [W, H] = canvasSize($("canvas-left"));
    const old = S.view.zoom; z = Math.min(64, Math.max(0.02, z));
    if (ax === undefined) { ax = W / 2; ay = H / 2; }
    const ix = S.view.cx + (ax - W / 2) / old, iy = S.view.cy + (ay - H / 2) / old;
    S.view = {fit: false, zoom: z, cx: ix - (ax - W / 2) / z, cy: iy - (ay - H / 2) / z};
    draw();
  }
  function setWL(level, width) {
    S.wl.level = Math.min(65535, Math.max(0, level)); S.wl.width = Math.min(65536, Math.max(64, width));
    rewindow();
  }

  function attachViewer(c) {
    let drag = null;
    c.addEventListener("contextmenu", (e) => e.preventDefault());
    c.addEventListener("pointerdown", (e) => {
      if (!S.img) return;
      drag = {x: e.clientX, y: e.clientY, wl: e.shiftKey || e.button === 2};
      c.setPointerCapture(e.pointerId);
    });
    c.addEventListener("pointermove", (e) => {
      if (!drag) return;
      const dpr = window.devicePixelRatio || 1, dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      drag.x = e.clientX; drag.y = e.clientY;
      if (drag.wl) { setWL(S.wl.level - dy * 256, S.wl.width + dx * 256); return; }
      if (S.view.fit) S.view.fit = false;
      S.view.cx -= dx * dpr / S.view.zoom; S.view.cy -= dy * dpr / S.view.zoom; draw();
    });
    const end = () => { drag = null; };
    c.addEventListener("pointerup", end); c.addEventListener("pointercancel", end);
    c.addEventListener("wheel", (e) => {
      if (!S.img) return;
      e.preventDefault();
      const r = c.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
      setZoom(S.view.zoom * (e.deltaY < 0 ? 1.25 : 0.8), (e.clientX - r.left) * dpr, (e.clientY - r.top) * dpr);
    }, {passive: false});
  }

  // ---- flow ----------------------------------------------------------------------------
  async function loadCurrent() {
    const st = S.state; setProgress(st);
    if (st.done) { show("done-view"); $("done-text").textContent = `All ${st.total} cases are done. Thank you.`; return; }
    show("study-view");
    delete document.body.dataset.ready;
    S.img = null; S.off = {}; S.view = {fit: true, zoom: 1, cx: 0, cy: 0}; S.wl = {level: 32768, width: 65536};
    $("case-error").hidden = true; $("rating-form").hidden = false; resetForm(); draw();
    const orig = st.original_side, rec = orig === "left" ? "right" : "left";
    $("label-" + orig).textContent = "Original"; $("label-" + rec).textContent = "Reconstruction";
    const trial = st.trial;
    try {
      const [o, r] = await Promise.all([fetchImage(trial, "original"), fetchImage(trial, "reconstruction")]);
      if (S.state.trial !== trial) return;  // moved on meanwhile
      if (o.w !== r.w || o.h !== r.h) throw new Error("the two images of this case differ in size; tell the study owner");
      S.img = {w: o.w, h: o.h}; S.img[orig] = o.px; S.img[rec] = r.px;
      S.t0 = performance.now(); rewindow(); updateSubmit();
      document.body.dataset.ready = trial;  // a stable hook: this case is on screen and can be rated
    } catch (e) {
      if (e.status === 401 || e.status === 403) return signedOut(e.message);
      $("case-error-text").textContent = e.message; $("case-error").hidden = false; $("rating-form").hidden = true;
      document.body.dataset.ready = trial;
    }
  }

  async function submit(ev) {
    ev.preventDefault();
    if (S.busy || !S.img) return;
    const body = {trial: S.state.trial, ...ratings(), comment: $("comment").value,
                  seconds: Math.round((performance.now() - S.t0) / 100) / 10};
    S.busy = true; updateSubmit();
    try {
      const st = await (await api("POST", "/api/answer", body)).json();
      S.busy = false; S.state = st; await loadCurrent();
    } catch (e) {
      S.busy = false; updateSubmit();
      if (e.status === 401 || e.status === 403) return signedOut(e.message);
      $("submit-error").textContent = "Not saved: " + e.message;
    }
  }

  async function skip() {
    try {
      const st = await (await api("POST", "/api/problem", {trial: S.state.trial, reason: $("case-error-text").textContent})).json();
      S.state = st; await loadCurrent();
    } catch (e) { $("case-error-text").textContent = "Could not skip: " + e.message; }
  }

  function signedOut(msg) {
    S.session = null; localStorage.removeItem(KEY); S.img = null;
    $("who").textContent = ""; $("progress-text").textContent = ""; $("progress").hidden = true;
    $("signin-error").textContent = msg || ""; show("signin-view");
  }

  async function signin(ev) {
    ev.preventDefault();
    $("signin-error").textContent = "";
    try {
      const r = await (await api("POST", "/api/signin", {name: $("reader-name").value})).json();
      S.session = r.session; localStorage.setItem(KEY, r.session);
      S.state = r; await loadCurrent();
    } catch (e) { $("signin-error").textContent = e.message; }
  }

  function onKey(e) {
    if (e.target instanceof HTMLInputElement && e.target.type !== "radio" && e.target.type !== "range") return;
    if (e.target instanceof HTMLTextAreaElement || !S.img || $("study-view").hidden) return;
    if (e.key === "+" || e.key === "=") setZoom(S.view.zoom * 1.25);
    else if (e.key === "-") setZoom(S.view.zoom * 0.8);
    else if (e.key === "1") setZoom(1);
    else if (e.key === "f" || e.key === "F") { S.view.fit = true; draw(); }
    else if (e.key === "r" || e.key === "R") setWL(32768, 65536);
  }

  async function start() {
    const info = await (await api("GET", "/api/study")).json();
    S.items = info.items; buildItems(S.items);
    $("signin-form").addEventListener("submit", signin);
    $("rating-form").addEventListener("submit", submit);
    $("skip-case").addEventListener("click", skip);
    $("signout").addEventListener("click", () => signedOut(""));
    $("zoom-fit").addEventListener("click", () => { S.view.fit = true; draw(); });
    $("zoom-1").addEventListener("click", () => setZoom(1));
    $("zoom-in").addEventListener("click", () => setZoom(S.view.zoom * 1.25));
    $("zoom-out").addEventListener("click", () => setZoom(S.view.zoom * 0.8));
    $("wl-reset").addEventListener("click", () => setWL(32768, 65536));
    $("wl-level").addEventListener("input", (e) => setWL(Number(e.target.value), S.wl.width));
    $("wl-width").addEventListener("input", (e) => setWL(S.wl.level, Number(e.target.value)));
    attachViewer($("canvas-left")); attachViewer($("canvas-right"));
    document.addEventListener("keydown", onKey);
    window.addEventListener("resize", draw);
    if (!S.session) return signedOut("");
    try { S.state = await (await api("GET", "/api/state")).json(); await loadCurrent(); }
    catch (e) { signedOut(e.status === 401 || e.status === 403 ? "" : e.message); }
  }
  start().catch((e) => { document.body.textContent = "The review page could not start: " + e.message; });
})();
