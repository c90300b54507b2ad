/* Tessera console: plain JavaScript on the public API (/v1), no build step, no third-party code.
 *
 * The API key lives in sessionStorage (this tab only) and travels in the Authorization header of fetch() calls; it
 * is never put in a URL, a log line or localStorage. Server-sent events are read with fetch() streaming because
 * EventSource cannot send headers. Paths are relative to /console so the pages work under a proxy prefix. */
(function () {
  "use strict";

  var KEY_SLOT = "tessera.console.apiKey";
  var COLORS = ["#e6007e", "#00b3c7", "#f5a623", "#7ed321", "#9013fe", "#4a90e2"];
  var TERMINAL = { succeeded: 1, failed: 1, canceled: 1 };
  var SOURCES = {
    user: "user mask",
    point: "SAM, point prompt",
    box: "SAM, box prompt",
    auto: "SAM, automatic",
    whole_image: "whole image",
  };
  var page = { abort: new AbortController() };
  var schemaCache = null;

  // ---- small helpers -------------------------------------------------------------------------------------------

  function $(id) {
    return document.getElementById(id);
  }

  /* Build an element; attributes named on* become listeners; children may be strings, nodes or arrays.
   * Text always goes through text nodes: nothing from the API is ever parsed as HTML. */
  function el(tag, attrs) {
    var node = document.createElement(tag);
    var key;
    for (key in attrs || {}) {
      var value = attrs[key];
      if (value === null || value === undefined || value === false) continue;
      if (key.slice(0, 2) === "on") node.addEventListener(key.slice(2), value);
      else if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      // Through the CSSOM: the page's Content-Security-Policy refuses style attributes (no 'unsafe-inline').
      else if (key === "style") node.style.cssText = value;
      else if (key in node && typeof value !== "string") node[key] = value;
      else node.setAttribute(key, value === true ? "" : value);
    }
    append(node, Array.prototype.slice.call(arguments, 2));
    return node;
  }

  function append(node, children) {
    children.forEach(function (child) {
      if (child === null || child === undefined || child === false) return;
      if (Array.isArray(child)) append(node, child);
      else node.appendChild(typeof child === "string" || typeof child === "number" ? document.createTextNode(String(child)) : child);
    });
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  function pct(x) {
    return Math.round((x || 0) * 1000) / 10 + "%";
  }

  function secs(x) {
    if (x === null || x === undefined) return "–";
    if (x < 1) return Math.round(x * 1000) + " ms";
    if (x < 120) return (Math.round(x * 10) / 10) + " s";
    return Math.round(x / 60) + " min";
  }

  function when(iso) {
    return iso ? new Date(iso).toLocaleString() : "–";
  }

  function badge(status) {
    return el("span", { class: "badge " + status, text: status });
  }

  function toast(message) {
    var box = $("toast");
    box.textContent = message;
    box.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(function () { box.hidden = true; }, 4000);
  }

  function errorBox(err) {
    var box = el("div", { class: "error", role: "alert" }, err.message || String(err));
    if (err.fields && err.fields.length) {
      box.appendChild(el("ul", null, err.fields.map(function (f) { return el("li", null, el("code", { text: f.field }), " ", f.message); })));
    }
    return box;
  }

  function json(value) {
    return el("pre", { text: JSON.stringify(value, null, 2) });
  }

  // ---- the API -------------------------------------------------------------------------------------------------

  function getKey() {
    return sessionStorage.getItem(KEY_SLOT);
  }

  function ApiError(status, problem) {
    this.status = status;
    this.code = (problem && problem.code) || "http_" + status;
    this.fields = (problem && problem.errors) || [];
    this.message = ((problem && problem.detail) || "the API answered " + status) + " (" + this.code + ")";
  }
  ApiError.prototype = Object.create(Error.prototype);

  function signedOut(message) {
    sessionStorage.removeItem(KEY_SLOT);
    showSignIn(message);
  }

  /* One call of the public API. opts: method, json (a body), form (FormData), signal, headers, key (for sign-in). */
  function api(path, opts) {
    opts = opts || {};
    var headers = Object.assign({ Authorization: "Bearer " + (opts.key || getKey() || "") }, opts.headers || {});
    var body;
    if (opts.json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(opts.json);
    } else if (opts.form) {
      body = opts.form;
    }
    return fetch(path, { method: opts.method || "GET", headers: headers, body: body, signal: opts.signal || page.abort.signal, cache: "no-store", credentials: "omit" })
      .then(function (response) {
        if (response.status === 204) return null;
        var type = response.headers.get("content-type") || "";
        var parsed = type.indexOf("json") >= 0 ? response.json() : response.text();
        return parsed.then(function (data) {
          if (response.ok) return data;
          var err = new ApiError(response.status, typeof data === "object" ? data : null);
          if (response.status === 401 && !opts.key) signedOut(keyMessage(err));
          throw err;
        });
      });
  }

  function keyMessage(err) {
    if (err.code === "missing_api_key") return "Enter an API key to sign in.";
    return "This API key was not accepted (" + err.code + "). Check that you pasted the whole key and that it has not been revoked.";
  }

  /* Every page of a list route (concepts), up to `max` items. */
  function listAll(path, max) {
    var items = [];
    function next(cursor) {
      var sep = path.indexOf("?") >= 0 ? "&" : "?";
      return api(path + sep + "limit=100" + (cursor ? "&cursor=" + encodeURIComponent(cursor) : "")).then(function (page) {
        items = items.concat(page.data);
        return page.next_cursor && items.length < max ? next(page.next_cursor) : items;
      });
    }
    return next(null);
  }

  /* The OpenAPI document: option defaults and enums come from it, so the forms follow the running version. */
  function schemas() {
    if (!schemaCache) {
      schemaCache = fetch("openapi.json", { credentials: "omit" })
        .then(function (r) { return r.ok ? r.json() : {}; })
        .then(function (doc) { return (doc.components && doc.components.schemas) || {}; })
        .catch(function () { return {}; });
    }
    return schemaCache;
  }

  function upload(file) {
    var form = new FormData();
    form.append("file", file, file.name || "image.png");
    return api("v1/files", { method: "POST", form: form });
  }

  /* Follow a job's server-sent events until a terminal status; onJob gets every Job. Resumes a dropped stream with
   * Last-Event-ID, and falls back to polling where streaming fetch is unavailable. Resolves with the last Job. */
  function follow(jobId, onJob, signal) {
    signal = signal || page.abort.signal;
    var lastId = null;
    var last = null;
    var failures = 0;
    function poll() {
      return api("v1/jobs/" + jobId, { signal: signal }).then(function (job) {
        last = job;
        onJob(job);
        if (TERMINAL[job.status]) return job;
        return new Promise(function (resolve) { setTimeout(resolve, 700); }).then(poll);
      });
    }
    function stream() {
      var headers = { Authorization: "Bearer " + getKey(), Accept: "text/event-stream" };
      if (lastId) headers["Last-Event-ID"] = lastId;
      return fetch("v1/jobs/" + jobId + "/events", { headers: headers, signal: signal, cache: "no-store", credentials: "omit" }).then(function (response) {
        if (response.status === 401) {
          signedOut("Your API key is no longer accepted; sign in again.");
          throw new ApiError(401, null);
        }
        if (!response.ok || !response.body || !window.TextDecoder) return poll();
        var reader = response.body.getReader();
        var decoder = new TextDecoder();
        var buffer = "";
        function pump() {
          return reader.read().then(function (chunk) {
            if (chunk.done) return finished();
            buffer += decoder.decode(chunk.value, { stream: true });
            var parts = buffer.split(/\r?\n\r?\n/);
            buffer = parts.pop();
            parts.forEach(function (block) {
              var data = [];
              var id = null;
              block.split(/\r?\n/).forEach(function (line) {
                if (line.indexOf("data:") === 0) data.push(line.slice(5).replace(/^ /, ""));
                else if (line.indexOf("id:") === 0) id = line.slice(3).trim();
              });
              if (!data.length) return; // a keep-alive comment
              if (id) lastId = id;
              last = JSON.parse(data.join("\n"));
              failures = 0;
              onJob(last);
            });
            return pump();
          });
        }
        return pump();
      });
    }
    function finished() {
      if (last && TERMINAL[last.status]) return last;
      // The stream ended early (an API restart, a proxy timeout): resume after the last event.
      return retry();
    }
    function retry() {
      failures += 1;
      if (failures > 5) return poll();
      return new Promise(function (resolve) { setTimeout(resolve, 500 * failures); }).then(stream);
    }
    return stream().catch(function (err) {
      if (signal.aborted || err instanceof ApiError) throw err;
      return retry();
    });
  }

  // ---- pictures ------------------------------------------------------------------------------------------------

  /* An <img> on a signed URL that refreshes itself: when the URL fails (expired, 403), `refresh` reads the owning
   * object again (the job or the file) for a fresh URL. At most three refreshes per image. */
  function signedImg(url, refresh, attrs) {
    var img = el("img", Object.assign({ alt: "", decoding: "async", referrerpolicy: "no-referrer" }, attrs || {}));
    var refreshes = 0;
    img.addEventListener("error", function () {
      if (!refresh || refreshes >= 3) return;
      refreshes += 1;
      img.dataset.refreshes = String(refreshes);
      refresh().then(function (fresh) {
        if (fresh) img.src = fresh;
      }).catch(function () { /* the object is gone: the broken image says so */ });
    });
    if (url) img.src = url;
    return img;
  }

  function loadPixels(url) {
    return new Promise(function (resolve, reject) {
      var img = new Image();
      img.crossOrigin = "anonymous";
      img.onload = function () {
        var c = document.createElement("canvas");
        c.width = img.naturalWidth;
        c.height = img.naturalHeight;
        var ctx = c.getContext("2d");
        ctx.drawImage(img, 0, 0);
        try {
          resolve(ctx.getImageData(0, 0, c.width, c.height));
        } catch (e) {
          reject(e); // a cross-origin store without CORS: the caller falls back to blending
        }
      };
      img.onerror = reject;
      img.src = url;
    });
  }

  function hexRgb(hex) {
    var n = parseInt(hex.slice(1), 16);
    return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
  }

  /* Draw a mask onto a canvas: its inside tinted (fill alpha) and its outline opaque, outline about 1/100 of the
   * side thick so it shows on 64 px and 512 px masks alike. */
  function drawMask(canvas, data, color, fillAlpha) {
    var w = data.width;
    var h = data.height;
    canvas.width = w;
    canvas.height = h;
    var ctx = canvas.getContext("2d");
    var out = ctx.createImageData(w, h);
    var rgb = hexRgb(color);
    var r = Math.max(1, Math.round(Math.max(w, h) / 160));
    var inside = new Uint8Array(w * h);
    var i;
    for (i = 0; i < w * h; i++) inside[i] = data.data[i * 4] > 127 ? 1 : 0;
    for (var y = 0; y < h; y++) {
      for (var x = 0; x < w; x++) {
        i = y * w + x;
        if (!inside[i]) continue;
        var edge = false;
        for (var d = 1; d <= r && !edge; d++) {
          edge = x - d < 0 || x + d >= w || y - d < 0 || y + d >= h ||
            !inside[i - d] || !inside[i + d] || !inside[i - d * w] || !inside[i + d * w];
        }
        out.data[i * 4] = rgb[0];
        out.data[i * 4 + 1] = rgb[1];
        out.data[i * 4 + 2] = rgb[2];
        out.data[i * 4 + 3] = edge ? 255 : Math.round(255 * fillAlpha);
      }
    }
    ctx.putImageData(out, 0, 0);
  }

  /* A picture with mask overlays. masks: [{url, color, label, group, refresh}]. size: displayed side in px. */
  function figure(url, refresh, masks, caption, size, fillAlpha) {
    size = size || 256;
    var frame = el("div", { class: "frame", style: "width:" + size + "px;height:" + size + "px" });
    var base = signedImg(url, refresh, { class: "base" });
    frame.appendChild(base);
    (masks || []).forEach(function (m) {
      if (!m.url) return;
      var canvas = el("canvas", { class: "overlay mask-overlay", "data-group": String(m.group), title: m.label || "" });
      frame.appendChild(canvas);
      loadPixels(m.url)
        .then(function (data) {
          drawMask(canvas, data, m.color, fillAlpha === undefined ? 0.35 : fillAlpha);
          canvas.classList.add("drawn");
        })
        .catch(function () {
          // No pixel access (cross-origin store without CORS, or an expired URL): blend the mask image instead.
          var fallback = signedImg(m.url, m.refresh, { class: "overlay mask-fallback mask-overlay", "data-group": String(m.group) });
          frame.replaceChild(fallback, canvas);
        });
    });
    return el("figure", { class: "figure", style: "width:" + size + "px" }, frame, caption ? el("figcaption", null, caption) : null);
  }

  /* Show or hide every overlay of one group (a concept) below `root`. */
  function toggleGroup(root, group, on) {
    Array.prototype.forEach.call(root.querySelectorAll('.mask-overlay[data-group="' + group + '"]'), function (node) {
      node.style.display = on ? "" : "none";
    });
  }

  // ---- progress ------------------------------------------------------------------------------------------------

  function progressView(id) {
    var bar = el("div", { class: "bar", style: "width:0%" });
    var label = el("div", { class: "label", text: "queued" });
    var box = el("div", { class: "progress", id: id || null, role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100" }, bar, label);
    box.update = function (job) {
      var p = job.progress;
      var fraction = job.status === "succeeded" ? 1 : (p ? p.fraction : 0);
      bar.style.width = Math.round(fraction * 100) + "%";
      box.setAttribute("aria-valuenow", String(Math.round(fraction * 100)));
      var text = Math.round(fraction * 100) + "%";
      if (job.status === "queued") text = "queued" + (job.queue_position !== null && job.queue_position !== undefined ? " (" + job.queue_position + " ahead)" : "");
      else if (job.status === "running" && p) {
        text += " · " + p.stage + (p.total_steps ? " " + p.step + "/" + p.total_steps : "") + (p.eta_seconds !== null && p.eta_seconds !== undefined ? " · " + secs(p.eta_seconds) + " left" : "");
      } else if (job.status !== "succeeded") text = job.status + " at " + text;
      label.textContent = text;
      box.dataset.status = job.status;
      box.dataset.updates = String(Number(box.dataset.updates || 0) + 1);
    };
    return box;
  }

  // ---- sign-in -------------------------------------------------------------------------------------------------

  function showSignIn(message) {
    page.abort.abort();
    page.abort = new AbortController();
    clear($("view"));
    $("signin").hidden = false;
    $("signout").hidden = true;
    $("whoami").textContent = "";
    var err = $("signin-error");
    err.hidden = !message;
    err.textContent = message || "";
    $("api-key").focus();
  }

  function signIn(event) {
    event.preventDefault();
    var input = $("api-key");
    var key = input.value.trim();
    var err = $("signin-error");
    var button = $("signin-submit");
    if (!key) return;
    button.disabled = true;
    err.hidden = true;
    api("v1/concepts?limit=1", { key: key })
      .then(function () {
        sessionStorage.setItem(KEY_SLOT, key);
        input.value = "";
        $("signin").hidden = true;
        route();
      })
      .catch(function (e) {
        err.hidden = false;
        if (e instanceof ApiError && e.status === 401) err.textContent = keyMessage(e);
        else if (e instanceof ApiError) err.textContent = "The API refused the sign-in: " + e.message;
        else err.textContent = "Cannot reach the API at " + location.origin + " (" + e.message + ").";
      })
      .then(function () { button.disabled = false; });
  }

  // ---- concepts ------------------------------------------------------------------------------------------------

  function conceptsPage(view) {
    var grid = el("div", { class: "grid", id: "concept-list" });
    var more = el("button", { type: "button", hidden: true, text: "More" });
    var cursor = null;
    append(view, [el("h1", null, "Concepts"), grid, more]);
    function load() {
      var q = "v1/concepts?limit=24" + (cursor ? "&cursor=" + encodeURIComponent(cursor) : "");
      return api(q).then(function (list) {
        if (!list.data.length && !cursor) grid.appendChild(el("p", { class: "muted" }, "No concepts yet. ", el("a", { href: "#/train", text: "Train one" }), "."));
        list.data.forEach(function (c) {
          grid.appendChild(el("a", { class: "card concept-card", href: "#/concepts/" + c.id, "data-name": c.name },
            el("h3", null, "<" + c.name + "> ", badge(c.status)),
            el("div", null, "class word: ", el("b", { text: c.class_word })),
            el("div", { class: "muted small" }, c.id, " · ", when(c.created_at))));
        });
        cursor = list.next_cursor;
        more.hidden = !cursor;
      });
    }
    more.addEventListener("click", load);
    return load();
  }

  function bars(rows) {
    return el("div", { class: "bars" }, rows.map(function (r) {
      return [el("span", null, r[0]), el("div", { class: "track" }, el("div", { class: "fill", style: "width:" + Math.round(Math.max(0, Math.min(1, r[1])) * 100) + "%" })), el("span", { class: "mono", text: pct(r[1]) })];
    }));
  }

  /* A loss curve, when the training recorded one: numbers, or {step, loss} objects. */
  function lossChart(points) {
    var ys = points.map(function (p) { return p.loss; }).filter(function (y) { return typeof y === "number" && isFinite(y); });
    if (ys.length < 2) return null;
    var w = 420, h = 140, lo = Math.min.apply(null, ys), hi = Math.max.apply(null, ys);
    var span = hi - lo || 1;
    var path = ys.map(function (y, i) { return (i ? "L" : "M") + (10 + i * (w - 20) / (ys.length - 1)).toFixed(1) + " " + (h - 15 - (y - lo) / span * (h - 30)).toFixed(1); }).join(" ");
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("class", "chart");
    svg.setAttribute("width", w);
    svg.setAttribute("height", h);
    var line = document.createElementNS(ns, "path");
    line.setAttribute("d", path);
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", "#0969da");
    line.setAttribute("stroke-width", "1.5");
    svg.appendChild(line);
    return el("div", null, svg, el("div", { class: "muted small" }, ys.length + " points, from " + lo.toPrecision(3) + " to " + hi.toPrecision(3)));
  }

  function diagnosticsView(d, concept) {
    var box = el("div", { id: "diagnostics" });
    if (d.attention_in_mask === undefined) {
      box.appendChild(el("p", { class: "muted" }, "No attention diagnostic in this training's output."));
    } else {
      var perRes = d.attention_in_mask_per_resolution || {};
      var during = d.attention_in_mask_during_training || {};
      var words = d.attention_in_mask_per_word || [];
      var wordNames = ["<" + concept.name + "> (V_rand)", concept.class_word + " (V_class)"];
      append(box, [
        el("p", null, "Share of the concept words' cross-attention that falls inside the concept's mask (1 = all of it), measured after training on ",
          String(d.attention_in_mask_images || "?"), " image(s) at timesteps ", (d.attention_in_mask_timesteps || []).join(", "), "."),
        el("div", { class: "big", id: "attention-overall", text: pct(d.attention_in_mask) }),
        el("h3", null, "Per resolution (attention map side)"),
        bars(Object.keys(perRes).sort(function (a, b) { return b - a; }).map(function (k) { return [k + "×" + k, perRes[k]]; })),
        el("h3", null, "Per word"),
        bars(words.map(function (v, i) { return [wordNames[i] || "word " + (i + 1), v]; })),
        Object.keys(during).length ? [el("h3", null, "During training, per resolution"),
          bars(Object.keys(during).sort(function (a, b) { return b - a; }).map(function (k) { return [k + "×" + k, during[k]]; }))] : null,
      ]);
    }
    box.appendChild(el("h3", null, "Training loss"));
    box.appendChild((d.loss_curve && lossChart(d.loss_curve)) || el("p", { class: "muted" }, "Not recorded: this training's output has no loss curve."));
    (d.warnings || []).forEach(function (w) { box.appendChild(el("p", { class: "warning" }, "⚠ " + w)); });
    box.appendChild(el("details", null, el("summary", null, "All diagnostics (JSON)"), json(d)));
    return box;
  }

  function trainingImages(job, refreshJob) {
    var ids = (job.input && job.input.images) || [];
    var out = job.output || {};
    var masks = out.masks || [];
    var sources = (out.diagnostics && out.diagnostics.mask_sources) || [];
    var userMasks = !!(job.input && job.input.masks);
    var row = el("div", { class: "row", id: "training-images" });
    ids.forEach(function (fileId, i) {
      var slot = el("div");
      row.appendChild(slot);
      api("v1/files/" + fileId).then(function (file) {
        var mask = masks[i];
        var refreshMask = function () { return refreshJob().then(function (j) { return j.output.masks[i].url; }); };
        var source = SOURCES[sources[i]] || (userMasks ? SOURCES.user : sources[i] || (mask ? "mask" : "no mask yet"));
        slot.appendChild(figure(file.url, function () { return api("v1/files/" + fileId).then(function (f) { return f.url; }); },
          mask ? [{ url: mask.url, color: COLORS[0], group: 0, refresh: refreshMask, label: source }] : [],
          el("span", null, "image " + (i + 1) + " · ", el("b", { class: "mask-source", text: source })), 200, 0.18));
      }).catch(function (e) {
        slot.appendChild(el("div", { class: "card muted small" }, "image " + (i + 1) + ": " + (e.status === 404 ? "deleted (retention)" : e.message)));
      });
    });
    return row;
  }

  function conceptPage(view, ref) {
    return api("v1/concepts/" + encodeURIComponent(ref)).then(function (c) {
      var head = el("div", { class: "card" },
        el("h1", null, "<" + c.name + "> ", badge(c.status)),
        el("div", null, "class word ", el("b", { text: c.class_word }), " · ", c.id, " · created ", when(c.created_at)),
        el("div", null, "training job ", el("a", { href: "#/jobs/" + c.training_job_id, text: c.training_job_id })),
        c.adapter ? el("div", { class: "muted small" }, "adapter " + Math.round(c.adapter.bytes / 1024) + " KB · " + c.adapter.format + " · sha256 " + c.adapter.sha256.slice(0, 16) + "…") : null);
      var body = el("div");
      append(view, [el("p", null, el("a", { href: "#/concepts", text: "← all concepts" })), head, body]);
      var refreshJob = function () { return api("v1/jobs/" + c.training_job_id); };
      function render(job) {
        clear(body);
        if (!TERMINAL[job.status]) {
          var bar = progressView("concept-progress");
          append(body, [el("h2", null, "Training"), bar]);
          follow(job.id, bar.update).then(function () { clear(view); conceptPage(view, ref); }).catch(function () {});
        }
        if (job.error) body.appendChild(el("div", { class: "error" }, job.error.code + ": " + job.error.message));
        append(body, [
          el("h2", null, "Training images and masks"),
          el("p", { class: "muted small" }, "Each mask is outlined on its image; the label says where it came from (an uploaded mask, Segment Anything with a point, a box or its automatic choice, or the whole image)."),
          trainingImages(job, refreshJob),
        ]);
        if (job.output) append(body, [el("h2", null, "Attention in mask"), diagnosticsView(job.output.diagnostics || {}, c)]);
      }
      return refreshJob().then(render);
    });
  }

  // ---- train ---------------------------------------------------------------------------------------------------

  var COMMON_OPTIONS = ["max_train_steps", "rank", "batch_size", "seed", "resolution", "separation_loss_weight", "augmentation_views"];

  function resolveSchema(all, s) {
    if (s && s.$ref) return all[s.$ref.split("/").pop()] || {};
    return s || {};
  }

  /* One input per option of the EDLoRAConfig schema, prefilled with its default; returns the element and a reader
   * that gives only the options changed from their defaults (so a preset's own defaults still apply). */
  function optionsForm(all) {
    var props = (all.EDLoRAConfig && all.EDLoRAConfig.properties) || {};
    var names = Object.keys(props);
    if (!names.length) names = ["max_train_steps", "seed", "batch_size"];
    var readers = [];
    function field(name) {
      var s = props[name] || {};
      var variants = s.anyOf ? s.anyOf : [s];
      var main = variants.filter(function (v) { return v.type !== "null"; })[0] || {};
      var nullable = variants.some(function (v) { return v.type === "null"; });
      var input;
      var def = s["default"];
      var id = "opt-" + name;
      if (main["enum"]) {
        input = el("select", { id: id }, main["enum"].map(function (v) { return el("option", { value: v, text: v, selected: v === def }); }));
      } else if (main.type === "boolean") {
        input = el("input", { id: id, type: "checkbox", checked: !!def });
      } else if (main.type === "integer" || main.type === "number") {
        input = el("input", { id: id, type: "number", step: main.type === "integer" ? "1" : "any", value: def === null || def === undefined ? "" : String(def), placeholder: nullable ? "model default" : "" });
      } else {
        input = el("input", { id: id, type: "text", value: def === undefined || def === null ? "" : JSON.stringify(def), placeholder: nullable ? "null" : "" });
      }
      readers.push(function (out) {
        var value;
        if (input.type === "checkbox") value = input.checked;
        else if (input.tagName === "SELECT") value = input.value;
        else if (input.type === "number") value = input.value === "" ? null : Number(input.value);
        else value = input.value.trim() === "" ? null : JSON.parse(input.value);
        var unchanged = def === undefined ? value === null : JSON.stringify(value) === JSON.stringify(def);
        if (!unchanged) out[name] = value;
      });
      return el("div", null, el("label", { "for": id }, name, def !== undefined ? el("span", { class: "muted small" }, " (default " + JSON.stringify(def) + ")") : null), input,
        s.description ? el("div", { class: "hint", text: s.description }) : null);
    }
    var common = names.filter(function (n) { return COMMON_OPTIONS.indexOf(n) >= 0; });
    var rest = names.filter(function (n) { return COMMON_OPTIONS.indexOf(n) < 0; });
    var node = el("div", null, el("div", { class: "options" }, common.map(field)),
      rest.length ? el("details", null, el("summary", null, "All options (" + rest.length + " more)"), el("div", { class: "options" }, rest.map(field))) : null);
    return { node: node, read: function () { var out = {}; readers.forEach(function (r) { r(out); }); return out; } };
  }

  /* One training image: a canvas to draw a point or a box on, an optional mask file and caption. */
  function trainImage(file, onRemove) {
    var item = { file: file, prompt: null, mask: null, caption: "" };
    var canvas = el("canvas", { width: 200, height: 200, class: "prompt-canvas", title: "Click for a point, drag for a box" });
    var picture = new Image();
    var maskData = null;
    var tool = el("select", { class: "tool" }, ["default (SAM's choice)", "point", "box"].map(function (t, i) { return el("option", { value: ["none", "point", "box"][i], text: t }); }));
    var maskInput = el("input", { type: "file", accept: "image/png,image/jpeg,image/webp", class: "mask-file" });
    var info = el("div", { class: "muted small" });
    function draw() {
      var ctx = canvas.getContext("2d");
      ctx.clearRect(0, 0, 200, 200);
      if (picture.complete && picture.naturalWidth) ctx.drawImage(picture, 0, 0, 200, 200);
      if (maskData) {
        var tmp = document.createElement("canvas");
        drawMask(tmp, maskData, COLORS[0], 0.25);
        ctx.imageSmoothingEnabled = false;
        ctx.drawImage(tmp, 0, 0, 200, 200);
      }
      ctx.strokeStyle = "#ffeb3b";
      ctx.fillStyle = "#ffeb3b";
      ctx.lineWidth = 2;
      var p = item.prompt;
      if (p && p.point) {
        ctx.beginPath();
        ctx.arc(p.point[0] * 200, p.point[1] * 200, 5, 0, 7);
        ctx.fill();
      } else if (p && p.box) {
        ctx.strokeRect(p.box[0] * 200, p.box[1] * 200, (p.box[2] - p.box[0]) * 200, (p.box[3] - p.box[1]) * 200);
      }
      info.textContent = item.mask ? "mask: " + item.mask.name : p ? (p.point ? "point " : "box ") + JSON.stringify(p.point || p.box) : "mask: Segment Anything's default choice";
    }
    picture.onload = draw;
    picture.src = URL.createObjectURL(file);
    var start = null;
    function at(e) {
      var r = canvas.getBoundingClientRect();
      var round = function (v) { return Math.round(Math.max(0, Math.min(1, v)) * 1000) / 1000; };
      return [round((e.clientX - r.left) / r.width), round((e.clientY - r.top) / r.height)];
    }
    canvas.addEventListener("mousedown", function (e) { start = at(e); });
    canvas.addEventListener("mouseup", function (e) {
      if (!start) return;
      var end = at(e);
      var kind = tool.value;
      var moved = Math.abs(end[0] - start[0]) > 0.02 && Math.abs(end[1] - start[1]) > 0.02;
      if (kind === "box" || (kind === "none" && moved)) {
        if (moved) item.prompt = { box: [Math.min(start[0], end[0]), Math.min(start[1], end[1]), Math.max(start[0], end[0]), Math.max(start[1], end[1])] };
        tool.value = "box";
      } else {
        item.prompt = { point: end };
        tool.value = "point";
      }
      start = null;
      draw();
    });
    tool.addEventListener("change", function () { if (tool.value === "none") item.prompt = null; draw(); });
    maskInput.addEventListener("change", function () {
      item.mask = maskInput.files[0] || null;
      maskData = null;
      if (item.mask) loadPixels(URL.createObjectURL(item.mask)).then(function (d) { maskData = d; draw(); });
      draw();
    });
    var caption = el("input", { type: "text", placeholder: "caption (optional), <name> = the concept", class: "caption", style: "width:200px" });
    caption.addEventListener("input", function () { item.caption = caption.value; });
    item.node = el("div", { class: "card train-image" }, canvas, el("div", null, tool, " ", el("button", { type: "button", text: "Remove", onclick: function () { onRemove(item); } })),
      el("label", { class: "small" }, "mask file (optional)"), maskInput, caption, info);
    draw();
    return item;
  }

  function trainPage(view) {
    var items = [];
    var list = el("div", { class: "row", id: "train-images" });
    var fileInput = el("input", { type: "file", id: "train-files", multiple: true, accept: "image/png,image/jpeg,image/webp", style: "display:none" });
    var drop = el("div", { class: "dropzone", id: "dropzone", tabindex: "0" }, "Drop training images here, or click to choose (PNG, JPEG, WebP).", fileInput);
    function add(files) {
      Array.prototype.forEach.call(files, function (f) {
        if (!/^image\//.test(f.type)) return toast(f.name + " is not an image");
        var item = trainImage(f, function (gone) {
          items = items.filter(function (x) { return x !== gone; });
          list.removeChild(gone.node);
        });
        items.push(item);
        list.appendChild(item.node);
      });
    }
    drop.addEventListener("click", function (e) { if (e.target !== fileInput) fileInput.click(); });
    drop.addEventListener("dragover", function (e) { e.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", function () { drop.classList.remove("over"); });
    drop.addEventListener("drop", function (e) { e.preventDefault(); drop.classList.remove("over"); add(e.dataTransfer.files); });
    fileInput.addEventListener("change", function () { add(fileInput.files); fileInput.value = ""; });

    var name = el("input", { id: "train-name", type: "text", placeholder: "corgi", pattern: "[a-z0-9][a-z0-9_-]{0,39}", required: true });
    var classWord = el("input", { id: "train-class", type: "text", placeholder: "dog", required: true });
    var optionsBox = el("div", null, el("p", { class: "muted" }, "Loading the options…"));
    var status = el("div", { id: "train-status" });
    var submit = el("button", { type: "button", class: "primary", id: "train-submit", text: "Upload and train" });
    var options = null;
    append(view, [
      el("h1", null, "Train a concept"),
      el("div", { class: "card" }, el("div", { class: "row" },
        el("div", null, el("label", { "for": "train-name" }, "Concept name (prompts say <name>)"), name),
        el("div", null, el("label", { "for": "train-class" }, "Class word (one plain word the model knows)"), classWord))),
      el("div", { class: "card" }, el("h2", null, "Images"), drop,
        el("p", { class: "muted small" }, "On each image: click for a point on the concept, or choose “box” and drag around it; or give a mask file (white = the concept) for every image. Nothing drawn = Segment Anything's default choice."),
        list),
      el("div", { class: "card" }, el("h2", null, "Options"), el("p", { class: "muted small" }, "Defaults from this service's OpenAPI document; only the options you change are sent, so the preset's own defaults apply to the rest (the job's input records what ran)."), optionsBox),
      el("div", { class: "card" }, submit, status),
    ]);
    submit.addEventListener("click", function () {
      clear(status);
      if (!items.length) return status.appendChild(errorBox(new Error("Add at least one image.")));
      var withMask = items.filter(function (x) { return x.mask; }).length;
      if (withMask && withMask !== items.length) return status.appendChild(errorBox(new Error("Give a mask file for every image, or for none.")));
      var body;
      try {
        body = {
          concept: { name: name.value.trim(), class_word: classWord.value.trim() },
          options: options ? options.read() : {},
        };
      } catch (e) {
        return status.appendChild(errorBox(new Error("An option is not valid JSON: " + e.message)));
      }
      submit.disabled = true;
      var note = el("p", { id: "train-upload", text: "Uploading…" });
      status.appendChild(note);
      var done = 0;
      var total = items.length + withMask;
      var step = function (file) {
        return upload(file).then(function (f) { done += 1; note.textContent = "Uploaded " + done + "/" + total; return f.id; });
      };
      // One at a time: uploads are small, and the rate limit counts each.
      var chain = Promise.resolve([]);
      items.forEach(function (item) {
        chain = chain.then(function (acc) {
          return step(item.file).then(function (id) {
            return item.mask ? step(item.mask).then(function (m) { return acc.concat([[id, m]]); }) : acc.concat([[id, null]]);
          });
        });
      });
      chain.then(function (pairs) {
        body.images = pairs.map(function (p) { return p[0]; });
        if (withMask) body.masks = pairs.map(function (p) { return p[1]; });
        else if (items.some(function (x) { return x.prompt; })) body.mask_prompts = items.map(function (x) { return x.prompt; });
        if (items.some(function (x) { return x.caption.trim(); })) body.captions = items.map(function (x) { return x.caption.trim() || null; });
        return api("v1/trainings", { method: "POST", json: body });
      }).then(function (job) {
        var bar = progressView("train-progress");
        append(status, [el("p", null, "Training job ", el("a", { href: "#/jobs/" + job.id, text: job.id, id: "train-job" }), " for ", el("b", { text: "<" + body.concept.name + ">" })), bar]);
        bar.update(job);
        return follow(job.id, bar.update).then(function (final) {
          if (final.status === "succeeded") {
            status.appendChild(el("p", { id: "train-done" }, "Ready: ", el("a", { href: "#/concepts/" + final.output.concept_id, text: "<" + body.concept.name + ">" }), " (masks and attention diagnostic on its page)."));
          } else if (final.error) {
            status.appendChild(errorBox(new Error(final.error.code + ": " + final.error.message)));
          }
        });
      }).catch(function (e) {
        if (e.name !== "AbortError") status.appendChild(errorBox(e));
      }).then(function () { submit.disabled = false; });
    });
    return schemas().then(function (all) {
      options = optionsForm(all);
      clear(optionsBox).appendChild(options.node);
    });
  }

  // ---- generate ------------------------------------------------------------------------------------------------

  var REF_RE = /<([A-Za-z0-9_-]{1,64})>/g;

  function promptRefs(prompt) {
    var seen = [];
    var m;
    REF_RE.lastIndex = 0;
    while ((m = REF_RE.exec(prompt))) if (seen.indexOf(m[1]) < 0) seen.push(m[1]);
    return seen;
  }

  /* `<` in the prompt opens a list of ready concepts; arrows choose, Enter or Tab inserts, Escape closes. */
  function completion(textarea, concepts) {
    var box = el("div", { class: "complete", id: "gen-complete", hidden: true });
    var active = 0;
    var shown = [];
    function partial() {
      var before = textarea.value.slice(0, textarea.selectionStart);
      var m = /<([A-Za-z0-9_-]*)$/.exec(before);
      return m ? m[1] : null;
    }
    function render() {
      var typed = partial();
      shown = typed === null ? [] : concepts().filter(function (c) { return c.name.indexOf(typed) === 0; });
      clear(box);
      box.hidden = !shown.length;
      active = Math.min(active, shown.length - 1);
      shown.forEach(function (c, i) {
        box.appendChild(el("div", { class: i === active ? "active" : "", "data-name": c.name, onmousedown: function (e) { e.preventDefault(); choose(i); } },
          "<" + c.name + ">", el("span", { class: "muted small", text: " " + c.class_word })));
      });
    }
    function choose(i) {
      var typed = partial();
      var c = shown[i];
      if (typed === null || !c) return;
      var pos = textarea.selectionStart;
      var start = pos - typed.length - 1;
      var rest = textarea.value.slice(pos).replace(/^[A-Za-z0-9_-]*>?/, "");
      textarea.value = textarea.value.slice(0, start) + "<" + c.name + ">" + rest;
      var caret = start + c.name.length + 2;
      textarea.setSelectionRange(caret, caret);
      box.hidden = true;
      textarea.dispatchEvent(new Event("change"));
    }
    textarea.addEventListener("input", function () { active = 0; render(); });
    textarea.addEventListener("click", render);
    textarea.addEventListener("blur", function () { box.hidden = true; });
    textarea.addEventListener("keydown", function (e) {
      if (box.hidden) return;
      if (e.key === "ArrowDown" || e.key === "ArrowUp") {
        e.preventDefault();
        active = (active + (e.key === "ArrowDown" ? 1 : shown.length - 1)) % shown.length;
        render();
      } else if (e.key === "Enter" || e.key === "Tab") {
        e.preventDefault();
        choose(active);
      } else if (e.key === "Escape") {
        box.hidden = true;
      }
    });
    return box;
  }

  function numberOrNull(input) {
    return input.value === "" ? null : Number(input.value);
  }

  /* The concepts a generation uses, in the order its masks come in: its `concepts`, else the prompt's refs. */
  function generationConcepts(input) {
    return input.concepts && input.concepts.length ? input.concepts.map(function (c) { return c.concept; }) : promptRefs(input.prompt || "");
  }

  /* A generation's result: per output image the stage-1 and styled images side by side, the final concept masks
   * overlaid, a toggle per concept, and one button per other fusion method with the same seed. */
  function generationResult(job, refreshJob, fusions, onCompare) {
    var out = job.output;
    var names = generationConcepts(job.input);
    var root = el("div", { class: "result-set", "data-job": job.id, "data-fusion": job.input.fusion });
    var n = out.images.length;
    var perImage = out.masks.length === names.length * n && n > 1;
    var styled = !!job.input.style;
    var toggles = el("div", { class: "toggles" }, "Masks: ", names.map(function (name, c) {
      var box = el("input", { type: "checkbox", checked: true, class: "mask-toggle", "data-group": String(c), onchange: function () { toggleGroup(root, c, box.checked); } });
      return el("label", { class: "inline" }, box, el("span", { class: "swatch", style: "background:" + COLORS[c % COLORS.length] }), "<" + name + ">");
    }));
    function masksFor(i) {
      return names.map(function (name, c) {
        var index = perImage ? i * names.length + c : c;
        var m = out.masks[index];
        return m && { url: m.url, color: COLORS[c % COLORS.length], group: c, label: "<" + name + ">", refresh: function () { return refreshJob().then(function (j) { return j.output.masks[index].url; }); } };
      }).filter(Boolean);
    }
    var rows = out.images.map(function (img, i) {
      var s1 = out.stage1_images[i];
      var fresh = function (field) { return function () { return refreshJob().then(function (j) { return j.output[field][i].url; }); }; };
      return el("div", { class: "row" },
        figure(s1.url, fresh("stage1_images"), masksFor(i), "stage 1 (" + job.input.fusion + ") · seed " + s1.seed, 256),
        styled ? figure(img.url, fresh("images"), masksFor(i), "styled · seed " + img.seed, 256) : el("p", { class: "muted small", style: "max-width:200px" }, "No styling stage: the image is the stage-1 image."));
    });
    var others = fusions.filter(function (f) { return f !== job.input.fusion; });
    var compare = others.map(function (f) {
      return el("button", { type: "button", class: "same-seed", "data-fusion": f, text: "Same seed, " + f, onclick: function () { onCompare(Object.assign({}, job.input, { fusion: f })); } });
    });
    append(root, [el("div", { class: "muted small" }, el("a", { href: "#/jobs/" + job.id, text: job.id }), " · " + job.input.fusion + " · seed " + job.input.seed + " · " + secs(job.metrics.run_seconds)),
      toggles, rows, compare.length ? el("div", null, compare) : null]);
    return root;
  }

  function generatePage(view) {
    var ready = [];
    var prompt = el("textarea", { id: "gen-prompt", placeholder: "a photo of <corgi> and <tabby> on the beach (type < for your concepts)", spellcheck: "false" });
    var negative = el("input", { id: "gen-negative", type: "text", style: "width:100%", placeholder: "negative prompt (optional)" });
    var fusion = el("select", { id: "gen-fusion" });
    var seed = el("input", { id: "gen-seed", type: "number", min: "0", placeholder: "random" });
    var sizes = {};
    ["width", "height", "num_inference_steps", "guidance_scale", "num_outputs"].forEach(function (k) {
      sizes[k] = el("input", { id: "gen-" + k.replace(/_/g, "-"), type: "number", step: k === "guidance_scale" ? "any" : "1", placeholder: k === "num_outputs" ? "1" : "preset default" });
    });
    var conceptRows = el("div", { id: "gen-concepts" });
    var pad = el("canvas", { class: "pad", width: 192, height: 192, id: "gen-pad", title: "Drag a box for the concept chosen on the left" });
    var layoutFile = el("input", { type: "file", id: "gen-layout", accept: "image/png,image/jpeg,image/webp" });
    var styleFile = el("input", { type: "file", id: "gen-style", accept: "image/png,image/jpeg,image/webp" });
    var styleScale = el("input", { id: "gen-style-scale", type: "number", step: "0.1", value: "1.0" });
    var styleMode = el("select", { id: "gen-style-mode" }, ["style", "style_and_layout"].map(function (m) { return el("option", { value: m, text: m }); }));
    var control = el("select", { id: "gen-control" }, ["none", "canny", "softedge", "depth"].map(function (m) { return el("option", { value: m, text: m === "none" ? "no ControlNet" : m }); }));
    var controlScale = el("input", { id: "gen-control-scale", type: "number", step: "0.1", value: "0.6" });
    var submit = el("button", { type: "button", class: "primary", id: "gen-submit", text: "Generate" });
    var status = el("div", { id: "gen-status" });
    var results = el("div", { id: "gen-results" });
    var regions = {};
    var activeRef = null;
    var fusions = ["conductor", "regional"];

    function drawPad() {
      var ctx = pad.getContext("2d");
      ctx.clearRect(0, 0, 192, 192);
      promptRefs(prompt.value).forEach(function (ref, c) {
        var b = regions[ref];
        if (!b) return;
        ctx.strokeStyle = COLORS[c % COLORS.length];
        ctx.lineWidth = ref === activeRef ? 3 : 2;
        ctx.strokeRect(b[0] * 192, b[1] * 192, (b[2] - b[0]) * 192, (b[3] - b[1]) * 192);
      });
    }
    function renderConcepts() {
      var refs = promptRefs(prompt.value);
      if (refs.indexOf(activeRef) < 0) activeRef = refs[0] || null;
      clear(conceptRows);
      if (!refs.length) conceptRows.appendChild(el("p", { class: "muted small" }, "Name concepts in the prompt as <name>."));
      refs.forEach(function (ref, c) {
        var known = ready.filter(function (x) { return x.name === ref || x.id === ref; })[0];
        var radio = el("input", { type: "radio", name: "gen-active", checked: ref === activeRef, onchange: function () { activeRef = ref; drawPad(); } });
        var weight = el("input", { type: "number", step: "0.05", min: "0", max: "2", class: "weight", "data-ref": ref, placeholder: "preset", style: "width:5.5em" });
        var region = el("span", { class: "mono small", text: regions[ref] ? "box " + JSON.stringify(regions[ref]) : "automatic layout" });
        conceptRows.appendChild(el("div", { class: "concept-row", "data-ref": ref },
          el("label", { class: "inline" }, radio, el("span", { class: "swatch", style: "background:" + COLORS[c % COLORS.length] }), "<" + ref + ">"),
          known ? null : el("span", { class: "warning small" }, " not a ready concept "),
          " weight ", weight, " ", region,
          regions[ref] ? el("button", { type: "button", text: "clear box", onclick: function () { delete regions[ref]; renderConcepts(); } }) : null));
      });
      drawPad();
    }
    var start = null;
    function at(e) {
      var r = pad.getBoundingClientRect();
      return [Math.max(0, Math.min(1, (e.clientX - r.left) / r.width)), Math.max(0, Math.min(1, (e.clientY - r.top) / r.height))];
    }
    pad.addEventListener("mousedown", function (e) { start = at(e); });
    pad.addEventListener("mouseup", function (e) {
      if (!start || !activeRef) return;
      var end = at(e);
      var r3 = function (v) { return Math.round(v * 1000) / 1000; };
      if (Math.abs(end[0] - start[0]) > 0.03 && Math.abs(end[1] - start[1]) > 0.03) {
        regions[activeRef] = [r3(Math.min(start[0], end[0])), r3(Math.min(start[1], end[1])), r3(Math.max(start[0], end[0])), r3(Math.max(start[1], end[1]))];
      }
      start = null;
      renderConcepts();
    });
    prompt.addEventListener("input", renderConcepts);
    prompt.addEventListener("change", renderConcepts);

    var complete = completion(prompt, function () { return ready; });
    append(view, [
      el("h1", null, "Generate"),
      el("div", { class: "cols" },
        el("div", { class: "card" },
          el("label", { "for": "gen-prompt" }, "Prompt"), el("div", { class: "prompt-wrap" }, prompt, complete),
          el("label", { "for": "gen-negative" }, "Negative prompt"), negative,
          el("div", { class: "row" },
            el("div", null, el("label", { "for": "gen-fusion" }, "Fusion"), fusion),
            el("div", null, el("label", { "for": "gen-seed" }, "Seed"), seed),
            Object.keys(sizes).map(function (k) { return el("div", null, el("label", { "for": sizes[k].id }, k.replace(/_/g, " ")), sizes[k]); }))),
        el("div", { class: "card" },
          el("h3", null, "Concepts and regions"),
          el("div", { class: "row" }, conceptRows, pad),
          el("p", { class: "muted small" }, "Choose a concept, then drag its box on the square (the image); without boxes the layout is automatic, or follows a layout image:"),
          el("label", { "for": "gen-layout" }, "Layout image (optional)"), layoutFile,
          el("h3", null, "Style and control (optional)"),
          el("div", { class: "row" }, el("div", null, el("label", { "for": "gen-style" }, "Style image"), styleFile),
            el("div", null, el("label", { "for": "gen-style-scale" }, "scale"), styleScale),
            el("div", null, el("label", { "for": "gen-style-mode" }, "mode"), styleMode)),
          el("div", { class: "row" }, el("div", null, el("label", { "for": "gen-control" }, "ControlNet (needs a style)"), control),
            el("div", null, el("label", { "for": "gen-control-scale" }, "scale"), controlScale)))),
      el("div", { class: "card" }, submit, status, results),
    ]);
    renderConcepts();

    function run(body) {
      var bar = progressView();
      var note = el("div", null, "Submitting…");
      var slot = el("div", { class: "result-set" }, note, bar);
      results.insertBefore(slot, results.firstChild);
      return api("v1/generations", { method: "POST", json: body }).then(function (job) {
        note.textContent = "";
        append(note, [el("a", { href: "#/jobs/" + job.id, text: job.id }), " · " + job.input.fusion + " · seed " + job.input.seed]);
        bar.update(job);
        return follow(job.id, bar.update);
      }).then(function (final) {
        if (final.status !== "succeeded") {
          slot.appendChild(errorBox(new Error(final.status + (final.error ? ": " + final.error.code + ": " + final.error.message : ""))));
          return;
        }
        var refresh = function () { return api("v1/jobs/" + final.id); };
        results.replaceChild(generationResult(final, refresh, fusions, run), slot);
      }).catch(function (e) {
        if (e.name !== "AbortError") slot.appendChild(errorBox(e));
      });
    }

    submit.addEventListener("click", function () {
      clear(status);
      var refs = promptRefs(prompt.value);
      var body = { prompt: prompt.value.trim(), fusion: fusion.value };
      if (negative.value.trim()) body.negative_prompt = negative.value.trim();
      if (seed.value !== "") body.seed = Number(seed.value);
      Object.keys(sizes).forEach(function (k) { var v = numberOrNull(sizes[k]); if (v !== null) body[k] = v; });
      var weights = conceptRows.querySelectorAll("input.weight");
      var uses = refs.map(function (ref, c) {
        var use = { concept: ref };
        var w = weights[c] && numberOrNull(weights[c]);
        if (w !== null && w !== undefined) use.weight = w;
        if (regions[ref]) use.region = { box: regions[ref] };
        return use;
      });
      if (uses.some(function (u) { return u.weight !== undefined || u.region; })) body.concepts = uses;
      if (control.value !== "none" && !styleFile.files[0]) return status.appendChild(errorBox(new Error("A ControlNet needs a style image.")));
      submit.disabled = true;
      var uploads = [];
      if (layoutFile.files[0]) uploads.push(upload(layoutFile.files[0]).then(function (f) { body.layout = { image: f.id }; }));
      if (styleFile.files[0]) {
        uploads.push(upload(styleFile.files[0]).then(function (f) { body.style = { image: f.id, scale: Number(styleScale.value), mode: styleMode.value }; }));
        if (control.value !== "none") body.control = { type: control.value, scale: Number(controlScale.value) };
      }
      Promise.all(uploads).then(function () {
        submit.disabled = false;
        return run(body);
      }).catch(function (e) {
        submit.disabled = false;
        status.appendChild(errorBox(e));
      });
    });

    return Promise.all([
      listAll("v1/concepts", 500).then(function (all) { ready = all.filter(function (c) { return c.status === "ready"; }); renderConcepts(); }),
      schemas().then(function (all) {
        var f = resolveSchema(all, ((all.GenerationRequest || {}).properties || {}).fusion);
        var variants = f.anyOf || [f];
        var values = [];
        variants.forEach(function (v) { if (v["enum"]) values = values.concat(v["enum"]); });
        if (values.length) fusions = values;
        fusions.forEach(function (v) { fusion.appendChild(el("option", { value: v, text: v, selected: v === f["default"] })); });
      }),
    ]);
  }

  // ---- jobs ----------------------------------------------------------------------------------------------------

  function cancelButton(job, after) {
    if (TERMINAL[job.status]) return null;
    var button = el("button", { type: "button", class: "danger cancel", "data-job": job.id, text: "Cancel" });
    button.addEventListener("click", function (e) {
      e.stopPropagation();
      button.disabled = true;
      api("v1/jobs/" + job.id + "/cancel", { method: "POST" }).then(function (j) {
        toast(j.status === "canceled" ? "Canceled " + j.id : "Cancel requested: " + j.id + " stops at its next step");
        after(j);
      }).catch(function (err) { button.disabled = false; toast(err.message); });
    });
    return button;
  }

  function jobsPage(view) {
    var kind = el("select", { id: "jobs-kind" }, ["", "training", "generation"].map(function (k) { return el("option", { value: k, text: k || "any kind" }); }));
    var status = el("select", { id: "jobs-status" }, ["", "queued", "running", "succeeded", "failed", "canceled"].map(function (s) { return el("option", { value: s, text: s || "any status" }); }));
    var tbody = el("tbody", { id: "jobs-rows" });
    var more = el("button", { type: "button", hidden: true, text: "More" });
    var cursor = null;
    var timer = null;
    append(view, [
      el("h1", null, "Jobs"),
      el("div", { class: "row" }, kind, status, el("button", { type: "button", id: "jobs-refresh", text: "Refresh", onclick: function () { reload(); } })),
      el("table", null, el("thead", null, el("tr", null, ["job", "kind", "status", "created", "queued", "ran", "progress", ""].map(function (h) { return el("th", { text: h }); }))), tbody),
      more,
    ]);
    function row(job) {
      return el("tr", { class: "clickable job-row", "data-job": job.id, "data-status": job.status, onclick: function () { location.hash = "#/jobs/" + job.id; } },
        el("td", { class: "mono" }, el("a", { href: "#/jobs/" + job.id, text: job.id })),
        el("td", { text: job.kind }), el("td", null, badge(job.status)), el("td", { text: when(job.created_at) }),
        el("td", { text: secs(job.metrics.queue_seconds) }), el("td", { text: secs(job.metrics.run_seconds) }),
        el("td", { text: job.progress ? pct(job.progress.fraction) + " " + job.progress.stage : job.status === "queued" && job.queue_position !== null ? job.queue_position + " ahead" : "" }),
        el("td", null, cancelButton(job, function () { reload(); })));
    }
    function load() {
      var q = "v1/jobs?limit=25" + (kind.value ? "&kind=" + kind.value : "") + (status.value ? "&status=" + status.value : "") + (cursor ? "&cursor=" + encodeURIComponent(cursor) : "");
      return api(q).then(function (list) {
        list.data.forEach(function (j) { tbody.appendChild(row(j)); });
        if (!tbody.firstChild) tbody.appendChild(el("tr", null, el("td", { colspan: "8", class: "muted", text: "No jobs." })));
        cursor = list.next_cursor;
        more.hidden = !cursor;
        clearTimeout(timer);
        // Active jobs move: refresh the first page every few seconds while this page is open.
        if (list.data.some(function (j) { return !TERMINAL[j.status]; })) {
          var signal = page.abort.signal;
          timer = setTimeout(function () { if (!signal.aborted) reload(); }, 3000);
        }
      });
    }
    function reload() {
      cursor = null;
      clear(tbody);
      return load().catch(function (e) {
        if (e.name !== "AbortError") tbody.appendChild(el("tr", null, el("td", { colspan: "8" }, errorBox(e))));
      });
    }
    kind.addEventListener("change", reload);
    status.addEventListener("change", reload);
    more.addEventListener("click", load);
    return reload();
  }

  var STAGE_COLORS = ["#0969da", "#8250df", "#1a7f37", "#bf8700", "#cf222e", "#1b7c83", "#6e7781"];

  function timeline(job) {
    var m = job.metrics || {};
    var parts = [["queue", m.queue_seconds || 0, "#afb8c1"]];
    var stages = m.stages || {};
    var staged = 0;
    Object.keys(stages).forEach(function (name, i) {
      parts.push([name, stages[name], STAGE_COLORS[i % STAGE_COLORS.length]]);
      staged += stages[name];
    });
    if (m.run_seconds && m.run_seconds - staged > 0.05) parts.push(["other", m.run_seconds - staged, "#d0d7de"]);
    var total = parts.reduce(function (a, p) { return a + p[1]; }, 0) || 1;
    return el("div", { id: "job-timeline" },
      el("div", { class: "timeline" }, parts.map(function (p) {
        return el("div", { style: "width:" + Math.max(0.5, p[1] / total * 100) + "%;background:" + p[2], title: p[0] + " " + secs(p[1]), text: p[0] });
      })),
      el("div", { class: "legend" }, parts.map(function (p) {
        return el("span", { class: "stage", "data-stage": p[0] }, el("span", { class: "swatch", style: "background:" + p[2] }), p[0] + " " + secs(p[1]));
      })),
      el("div", { class: "muted small" }, "created " + when(job.created_at) + " · started " + when(job.started_at) + " · finished " + when(job.completed_at)));
  }

  function deliveries(jobId) {
    var box = el("div", { id: "job-deliveries" }, el("p", { class: "muted" }, "Loading…"));
    api("v1/jobs/" + jobId + "/webhook_deliveries").then(function (list) {
      clear(box);
      if (!list.data.length) return box.appendChild(el("p", { class: "muted" }, "No webhook deliveries (the job has no webhook, or nothing was sent yet)."));
      box.appendChild(el("table", null, el("thead", null, el("tr", null, ["event", "attempt", "status", "latency", "error", "at", "next retry"].map(function (h) { return el("th", { text: h }); }))),
        el("tbody", null, list.data.map(function (d) {
          return el("tr", null, el("td", { text: d.type }), el("td", { text: String(d.attempt) }), el("td", { text: d.status_code === null ? "–" : String(d.status_code) }),
            el("td", { text: d.latency_ms === null ? "–" : Math.round(d.latency_ms) + " ms" }), el("td", { text: d.error || "" }), el("td", { text: when(d.at) }), el("td", { text: when(d.next_retry_at) }));
        }))));
    }).catch(function (e) { clear(box).appendChild(errorBox(e)); });
    return box;
  }

  function jobPage(view, id) {
    var refresh = function () { return api("v1/jobs/" + id); };
    return Promise.all([refresh(), schemas()]).then(function (got) {
      var job = got[0];
      var all = got[1];
      var f = resolveSchema(all, ((all.GenerationRequest || {}).properties || {}).fusion);
      var fusions = [];
      (f.anyOf || [f]).forEach(function (v) { if (v["enum"]) fusions = fusions.concat(v["enum"]); });
      var head = el("div", { class: "card" });
      var body = el("div");
      append(view, [el("p", null, el("a", { href: "#/jobs", text: "← all jobs" })), head, body]);
      function render(j) {
        clear(head);
        append(head, [el("h1", null, j.kind + " ", el("span", { class: "mono", text: j.id }), " ", el("span", { id: "job-status" }, badge(j.status))),
          cancelButton(j, render)]);
        if (!TERMINAL[j.status]) {
          var bar = progressView("job-progress");
          bar.update(j);
          head.appendChild(bar);
          if (!render.following) {
            render.following = true;
            follow(j.id, function (next) { bar.update(next); if (next.status !== j.status) { render(next); } }).then(function (final) { render.following = false; render(final); }).catch(function () {});
          }
        }
        clear(body);
        if (j.error) body.appendChild(el("div", { class: "error", id: "job-error" }, j.error.code + ": " + j.error.message));
        append(body, [el("h2", null, "Timeline"), timeline(j)]);
        if (j.output && j.kind === "generation") {
          append(body, [el("h2", null, "Output"), generationResult(j, refresh, fusions, function (input) {
            api("v1/generations", { method: "POST", json: input }).then(function (n) { location.hash = "#/jobs/" + n.id; }).catch(function (e) { toast(e.message); });
          })]);
        } else if (j.output && j.kind === "training") {
          append(body, [el("h2", null, "Output"), el("p", null, "Concept ", el("a", { href: "#/concepts/" + j.output.concept_id, text: j.output.concept_id }), " (its page shows the masks and the attention diagnostic).")]);
        }
        append(body, [
          el("h2", null, "Input"), json(j.input),
          j.output ? el("details", null, el("summary", null, "Output (JSON)"), json(j.output)) : null,
          el("h2", null, "Webhook deliveries"), deliveries(j.id),
        ]);
      }
      render(job);
    });
  }

  // ---- routing -------------------------------------------------------------------------------------------------

  var PAGES = {
    concepts: function (view, arg) { return arg ? conceptPage(view, arg) : conceptsPage(view); },
    train: trainPage,
    generate: generatePage,
    jobs: function (view, arg) { return arg ? jobPage(view, arg) : jobsPage(view); },
  };

  function route() {
    page.abort.abort();
    page.abort = new AbortController();
    if (!getKey()) return showSignIn(null);
    $("signin").hidden = true;
    $("signout").hidden = false;
    $("whoami").textContent = "signed in";
    var parts = (location.hash.replace(/^#\/?/, "") || "concepts").split("/");
    var name = PAGES[parts[0]] ? parts[0] : "concepts";
    Array.prototype.forEach.call(document.querySelectorAll("#nav a"), function (a) { a.classList.toggle("active", a.dataset.page === name); });
    var view = clear($("view"));
    view.dataset.page = name;
    delete view.dataset.ready;
    delete view.dataset.readyAt;
    var signal = page.abort.signal;
    Promise.resolve(PAGES[name](view, parts[1] ? decodeURIComponent(parts[1]) : null))
      .then(function () {
        if (signal.aborted) return;
        // Milliseconds since navigation start when the page's content was shown (the load-time budget is 1 s).
        view.dataset.readyAt = String(Math.round(performance.now()));
        view.dataset.ready = "yes";
      })
      .catch(function (e) {
        if (e.name === "AbortError" || (e instanceof ApiError && e.status === 401)) return;
        view.appendChild(errorBox(e));
        view.dataset.ready = "error";
      });
  }

  document.addEventListener("DOMContentLoaded", function () {
    $("signin-form").addEventListener("submit", signIn);
    $("signout").addEventListener("click", function () { signedOut("Signed out."); });
    window.addEventListener("hashchange", route);
    route();
  });
})();
