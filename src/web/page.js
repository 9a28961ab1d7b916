// The redswarm status page: reads api/overview, draws tables, and reads
// again every refresh_ms. Plain DOM calls, no framework; every value from
// Redis goes in through textContent, never as HTML.
"use strict";
(function () {
  var refreshMs = 2000;
  var timer = null;

  function $(id) { return document.getElementById(id); }

  // el("td", {class: "num", "data-field": "ready"}, "3")
  function el(tag, attrs) {
    var node = document.createElement(tag);
    var key;
    for (key in attrs || {}) {
      if (attrs[key] !== undefined && attrs[key] !== null) node.setAttribute(key, attrs[key]);
    }
    for (var i = 2; i < arguments.length; i++) {
      var c = arguments[i];
      if (c === null || c === undefined) continue;
      node.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  // 93_000 -> "1m 33s"; negative -> "-1m 33s"
  function dur(ms) {
    if (ms === null || ms === undefined) return "–";
    var sign = ms < 0 ? "-" : "";
    var s = Math.floor(Math.abs(ms) / 1000);
    if (Math.abs(ms) < 10000) return sign + (Math.abs(ms) / 1000).toFixed(1) + "s";
    var d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
    s = s % 60;
    if (d) return sign + d + "d " + h + "h";
    if (h) return sign + h + "h " + m + "m";
    if (m) return sign + m + "m " + s + "s";
    return sign + s + "s";
  }

  function plural(n, word) { return n + " " + word + (n === 1 ? "" : "s"); }

  // Task ids are long: the first 8 characters, the whole id on hover.
  function shortId(id) {
    return id.length > 10 ? el("span", {title: id}, id.slice(0, 8) + "…") : id;
  }

  function ago(now, at) { return at ? dur(now - at) + " ago" : "–"; }

  // columns: [{h: header, num: bool, field: name for data-field, get: row -> text or node, cls}]
  // A column marked `optional` is left out when no row has a value in it
  // (the "problem" columns, empty unless something in Redis is corrupt).
  function table(containerId, columns, rows, empty, rowAttrs) {
    var box = $(containerId);
    box.textContent = "";
    if (!rows.length) {
      box.appendChild(el("p", {class: "empty"}, empty));
      return;
    }
    columns = columns.filter(function (c) {
      return !c.optional || rows.some(function (r) { return c.get(r) !== ""; });
    });
    var head = el("tr");
    columns.forEach(function (c) { head.appendChild(el("th", {class: c.num ? "num" : null}, c.h)); });
    var body = el("tbody");
    rows.forEach(function (r) {
      var tr = el("tr", rowAttrs ? rowAttrs(r) : {});
      columns.forEach(function (c) {
        var cls = [c.num ? "num" : "", typeof c.cls === "function" ? c.cls(r) : c.cls || ""].join(" ").trim();
        tr.appendChild(el("td", {class: cls || null, "data-field": c.field || null}, c.get(r)));
      });
      body.appendChild(tr);
    });
    box.appendChild(el("table", {}, el("thead", {}, head), body));
  }

  function card(label, value, key, cls) {
    return el("div", {class: "card"},
      el("div", {class: "n " + (cls || ""), "data-total": key}, value),
      el("div", {class: "l"}, label));
  }

  // A number in 0..1 or 0..100 (alone or as pct/percent/progress of an
  // object) becomes a bar; anything else is shown as compact JSON.
  function progress(p) {
    if (p === undefined || p === null) return "–";
    var n = typeof p === "number" ? p : null;
    if (n === null && typeof p === "object") {
      ["pct", "percent", "progress"].forEach(function (k) {
        if (n === null && typeof p[k] === "number") n = p[k];
      });
    }
    var text = typeof p === "string" ? p : JSON.stringify(p);
    if (n !== null && typeof p === "object") {
      // The number is drawn as the bar: show the other fields beside it.
      var rest = Object.keys(p).filter(function (k) { return p[k] !== n; }).map(function (k) {
        return typeof p[k] === "string" ? p[k] : k + "=" + JSON.stringify(p[k]);
      });
      text = Math.round(n) + "%" + (rest.length ? " " + rest.join(", ") : "");
    }
    if (text.length > 80) text = text.slice(0, 77) + "…";
    if (n === null) return el("span", {class: "mono"}, text);
    var pct = n <= 1 && typeof p === "number" && !Number.isInteger(n) ? n * 100 : n;
    pct = Math.max(0, Math.min(100, pct));
    // Through the CSSOM: the page's CSP refuses style attributes.
    var fill = el("span");
    fill.style.width = pct.toFixed(0) + "%";
    return el("span", {}, el("span", {class: "bar"}, fill),
      typeof p === "number" ? pct.toFixed(0) + "%" : text);
  }

  function retryButton(row, allowed) {
    var b = el("button", {type: "button", title: allowed ? "put this task back in its queue" : "read-only: start with --allow-actions"}, "Retry");
    if (!allowed) { b.disabled = true; return b; }
    b.addEventListener("click", function () {
      b.disabled = true;
      b.textContent = "…";
      fetch("api/queues/" + encodeURIComponent(row.queue) + "/failed/" + encodeURIComponent(row.id) + "/retry", {
        method: "POST",
        headers: {"X-Redswarm-Action": "retry"},
        credentials: "same-origin"
      }).then(function (r) {
        return r.json().then(function (body) {
          if (!r.ok) throw new Error(body.error || ("HTTP " + r.status));
          b.textContent = "queued";
          load();
        });
      }).catch(function (e) {
        b.textContent = "Retry";
        b.disabled = false;
        showError("retry of " + row.id + " failed: " + e.message);
      });
    });
    return b;
  }

  function showError(text) {
    var e = $("error");
    e.textContent = text;
    e.hidden = !text;
  }

  function render(d) {
    var now = d.now_ms;
    refreshMs = d.refresh_ms || refreshMs;
    $("namespace").textContent = "namespace " + d.namespace;
    $("status").textContent = "updated " + new Date(now).toLocaleTimeString() +
      " (Redis clock) · every " + dur(refreshMs) + " · " + (d.actions_allowed ? "actions allowed" : "read-only");
    var t = d.totals;
    var s = $("summary");
    s.textContent = "";
    [["live nodes", t.live_nodes, "live_nodes"], ["queues", d.queues.length, "queues"],
     ["ready", t.ready, "ready"], ["delayed", t.delayed, "delayed"], ["running", t.running, "running"],
     ["ended", t.ended, "ended"], ["failed", t.failed, "failed", t.failed ? "bad" : ""],
     ["done / min", t.ended_last_minute, "ended_last_minute", "ok"],
     ["failed / min", t.failed_last_minute, "failed_last_minute", t.failed_last_minute ? "bad" : ""]
    ].forEach(function (c) { s.appendChild(card(c[0], c[1], c[2], c[3])); });

    table("queues", [
      {h: "queue", get: function (q) { return q.name; }},
      {h: "ready", num: true, field: "ready", get: function (q) { return q.counts.ready; }},
      {h: "delayed", num: true, field: "delayed", get: function (q) { return q.counts.delayed; }},
      {h: "running", num: true, field: "running", get: function (q) { return q.counts.running; }},
      {h: "ended", num: true, field: "ended", get: function (q) { return q.counts.ended; }},
      {h: "failed", num: true, field: "failed", get: function (q) { return q.counts.failed; }, cls: function (q) { return q.counts.failed ? "bad" : ""; }},
      {h: "done/min", num: true, field: "ended_last_minute", get: function (q) { return q.ended_last_minute; }},
      {h: "failed/min", num: true, field: "failed_last_minute", get: function (q) { return q.failed_last_minute; }},
      {h: "problem", cls: "err", optional: true, get: function (q) { return q.problem || ""; }}
    ], d.queues, "no queues in this namespace", function (q) { return {"data-queue": q.name}; });

    table("running", [
      {h: "queue", get: function (r) { return r.queue; }},
      {h: "task", cls: "mono", get: function (r) { return shortId(r.id); }},
      {h: "worker", cls: "nowrap", get: function (r) { return r.task && r.task.worker || "–"; }},
      {h: "attempt", num: true, get: function (r) { return r.task ? r.task.attempts : "–"; }},
      {h: "started", cls: "nowrap", get: function (r) { return r.task ? ago(now, r.task.started_ms) : "–"; }},
      {h: "lease left", num: true, cls: "nowrap", get: function (r) { return dur(r.at_ms - now); }},
      {h: "progress", field: "progress", get: function (r) { return r.problem ? r.problem : progress(r.progress); }}
    ], d.running, "nothing running", function (r) { return {"data-queue": r.queue, "data-id": r.id}; });

    table("failed", [
      {h: "queue", get: function (r) { return r.queue; }},
      {h: "task", cls: "mono", get: function (r) { return shortId(r.id); }},
      {h: "failed", cls: "nowrap", get: function (r) { return ago(now, r.at_ms); }},
      {h: "attempts", num: true, cls: "nowrap", get: function (r) { return r.task ? r.task.failures + "/" + r.task.max_attempts + (r.task.lost_runs ? " +" + r.task.lost_runs + " lost" : "") : "–"; }},
      {h: "error", cls: "err", field: "error", get: function (r) {
        if (!r.task) return r.problem || "record gone";
        var by = r.task.failed_by && r.task.failed_by !== "handler" ? "[" + r.task.failed_by + "] " : "";
        return by + (r.task.error || "");
      }},
      {h: "", cls: "nowrap", get: function (r) { return retryButton(r, d.actions_allowed); }}
    ], d.failed, "no failed tasks", function (r) { return {"data-queue": r.queue, "data-id": r.id}; });

    table("nodes", [
      {h: "node", cls: "mono", get: function (n) { return n.id + (n.is_self ? " (this page)" : ""); }},
      {h: "host", cls: "nowrap", get: function (n) { return n.host + " pid " + n.pid; }},
      {h: "uptime", num: true, cls: "nowrap", get: function (n) { return dur(n.uptime_ms); }},
      {h: "peer", cls: "mono", get: function (n) { return n.peer_addr || "–"; }},
      {h: "state", get: function (n) { return n.state; }, cls: function (n) { return n.state === "live" ? "ok" : "bad"; }},
      {h: "lease", num: true, get: function (n) { return dur(n.lease_left_ms); }},
      {h: "holds", get: function (n) {
        var h = n.holds || {};
        return [plural((h.locks || []).length, "lock"), plural((h.permits || []).length, "permit"),
          plural(h.running_tasks || 0, "task"), plural(h.cluster_jobs || 0, "job")].join(" · ");
      }}
    ], d.nodes, "no nodes", function (n) { return {"data-node": n.id}; });

    table("locks", [
      {h: "lock", get: function (l) { return l.name; }},
      {h: "holder", cls: "nowrap", field: "holder", get: function (l) { return l.holder_node || "–"; }},
      {h: "ttl left", num: true, cls: "nowrap", get: function (l) { return dur(l.ttl_left_ms); }},
      {h: "fencing token", num: true, cls: "mono", field: "fencing_token", get: function (l) { return l.fencing_token === null ? "–" : l.fencing_token; }},
      {h: "waiters", num: true, get: function (l) { return l.waiters; }},
      {h: "problem", cls: "err", optional: true, get: function (l) { return l.problem || ""; }}
    ], d.locks, "no locks held", function (l) { return {"data-lock": l.name}; });

    table("semaphores", [
      {h: "semaphore", get: function (x) { return x.name; }},
      {h: "permits", num: true, field: "permits", get: function (x) { return x.permits.length; }},
      {h: "holders", get: function (x) {
        return x.permits.map(function (p) { return (p.node || "?") + " (" + dur(p.ttl_left_ms) + ")"; }).join(", ") || "–";
      }},
      {h: "waiters", num: true, get: function (x) { return x.waiters; }},
      {h: "expired", num: true, get: function (x) { return x.expired; }},
      {h: "problem", cls: "err", optional: true, get: function (x) { return x.problem || ""; }}
    ], d.semaphores, "no permits held");

    table("clusters", [
      {h: "cluster", get: function (c) { return c.name; }},
      {h: "jobs", num: true, get: function (c) { return c.jobs; }},
      {h: "pending", num: true, get: function (c) { return c.pending; }},
      {h: "master", get: function (c) { return c.master_lease_left_ms === null ? "none" : "lease " + dur(c.master_lease_left_ms); }},
      {h: "workers (jobs/capacity)", get: function (c) {
        return c.workers.map(function (w) { return (w.node || w.id.slice(0, 8)) + " " + w.jobs + "/" + w.capacity; }).join(", ") || "–";
      }},
      {h: "problem", cls: "err", optional: true, get: function (c) { return c.problem || ""; }}
    ], d.clusters, "no job clusters");

    table("trackers", [
      {h: "tracker", get: function (x) { return x.name; }},
      {h: "released", num: true, get: function (x) { return x.released; }},
      {h: "processing", num: true, get: function (x) { return x.processing; }},
      {h: "locked", num: true, get: function (x) { return x.locked; }},
      {h: "completed", num: true, get: function (x) { return x.completed; }},
      {h: "failed", num: true, get: function (x) { return x.failed; }},
      {h: "problem", cls: "err", optional: true, get: function (x) { return x.problem || ""; }}
    ], d.trackers, "no chunk trackers");
  }

  function load() {
    if (timer) clearTimeout(timer);
    fetch("api/overview", {cache: "no-store", credentials: "same-origin"})
      .then(function (r) {
        return r.json().then(function (body) {
          if (!r.ok) throw new Error(body.error || ("HTTP " + r.status));
          return body;
        });
      })
      .then(function (d) {
        render(d);
        showError("");
        document.body.classList.remove("stale");
      })
      .catch(function (e) {
        showError("cannot read the status: " + e.message + " (showing the last data read)");
        document.body.classList.add("stale");
      })
      .then(function () { timer = setTimeout(load, refreshMs); });
  }

  load();
})();
