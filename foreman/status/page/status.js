// foreman's status page: polls the status document (GET /foreman/status)
// and draws it. The page holds no data of its own. Everything taken from the
// document goes into the page as text (textContent, createElement), never as
// markup: client, model and target names are data, whatever they contain.
"use strict";

(function () {
  const POLL_MS = 2000;
  // A foreman that takes this long to answer is as good as unreachable.
  const ANSWER_TIMEOUT_MS = 10000;
  const TOKEN_KEY = "foreman.token";
  // The SVG namespace as the HTML parser gave it to the page's template: the
  // page's files spell out no address at all, not even a namespace.
  const SVG_NS = document.getElementById("chart-template").content.firstElementChild.namespaceURI;
  const CHART_WIDTH = 600;
  const CHART_HEIGHT = 120;
  // The document keeps the last hundred; a glance needs the newest few.
  const RECENT_SHOWN = 20;

  const byId = (id) => document.getElementById(id);
  const page = {
    main: byId("status"),
    message: byId("message"),
    summary: byId("summary"),
    form: byId("token-form"),
    prompt: byId("token-prompt"),
    input: byId("token-input"),
    forget: byId("forget-token"),
    targets: byId("targets"),
    clients: byId("clients").tBodies[0],
    running: byId("running").tBodies[0],
    recent: byId("recent").tBodies[0],
    charts: byId("charts"),
    more: byId("recent-more"),
  };

  let timer = null;
  let poll_number = 0; // answers to older polls are dropped
  let shown_at = null; // foreman's clock when the data shown was current
  // Where sessionStorage is refused (some private modes), the token lives
  // in this tab's memory only; it is never put anywhere longer-lived.
  let token_in_memory = null;
  let show_all_recent = false;
  let last_doc = null;

  // --- the token ---------------------------------------------------------

  function storedToken() {
    let token;
    try {
      token = sessionStorage.getItem(TOKEN_KEY);
    } catch (error) {
      token = token_in_memory;
    }
    // One that could never be sent (stored by an older page) is no token at all.
    return token && sendable(token) ? token : null;
  }

  function storeToken(token) {
    try {
      sessionStorage.setItem(TOKEN_KEY, token);
    } catch (error) {
      token_in_memory = token;
    }
  }

  // A bearer token goes in a header: a browser cannot send one with spaces
  // or characters outside ASCII (it throws, as if foreman were unreachable).
  function sendable(token) {
    return /^[\x21-\x7e]+$/.test(token);
  }

  function forgetToken() {
    token_in_memory = null;
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch (error) {
      // nothing stored, nothing to forget
    }
  }

  // --- polling -----------------------------------------------------------

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(poll, POLL_MS);
  }

  async function poll() {
    clearTimeout(timer);
    timer = null;
    const mine = ++poll_number;
    const token = storedToken();
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    const abort = new AbortController();
    const give_up = setTimeout(() => abort.abort(), ANSWER_TIMEOUT_MS);
    let response;
    let doc = null;
    try {
      // Relative to /foreman/, so a foreman behind a path prefix works too.
      response = await fetch("status", {
        headers,
        cache: "no-store",
        credentials: "omit",
        signal: abort.signal,
      });
      if (response.ok) doc = await response.json();
    } catch (error) {
      if (mine === poll_number) {
        unreachable(response && response.ok ? "foreman's answer could not be read" : "foreman cannot be reached");
      }
      return;
    } finally {
      clearTimeout(give_up);
    }
    if (mine !== poll_number) return;
    if (response.status === 401) {
      askForToken(Boolean(token));
    } else if (!response.ok) {
      unreachable("foreman answered " + response.status + " " + response.statusText);
    } else {
      try {
        show(doc);
      } catch (error) {
        console.error(error);
        unreachable("foreman's answer could not be shown (" + error.message + ")");
        return;
      }
      schedule();
    }
  }

  function setState(state) {
    document.body.dataset.state = state;
  }

  function askForToken(refused, why) {
    if (refused) forgetToken();
    clearData();
    setState(refused ? "refused" : "needs-token");
    page.prompt.textContent = why || (refused
      ? "That token was refused. Try another one."
      : "This foreman needs a token to show its status.");
    page.message.hidden = true;
    page.forget.hidden = true;
    page.form.hidden = false;
    page.input.focus();
  }

  function unreachable(reason) {
    setState("unreachable");
    let text = reason + ". Retrying every " + POLL_MS / 1000 + " seconds.";
    if (shown_at !== null) {
      text += " What is shown below is from " + clock(shown_at) + " and may be out of date.";
      page.main.classList.add("stale");
    }
    page.message.textContent = text;
    page.message.hidden = false;
    schedule();
  }

  function clearData() {
    shown_at = null;
    last_doc = null;
    page.more.hidden = true;
    page.main.hidden = true;
    page.main.classList.remove("stale");
    page.summary.replaceChildren();
    for (const part of [page.targets, page.clients, page.running, page.recent, page.charts]) {
      part.replaceChildren();
    }
  }

  page.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = page.input.value.trim();
    page.input.value = "";
    if (!token) return;
    if (!sendable(token)) {
      askForToken(true, "That cannot be a token: a token is letters, digits and punctuation, "
        + "without spaces or other characters. Try again.");
      return;
    }
    storeToken(token);
    page.form.hidden = true;
    setState("loading");
    poll();
  });

  page.more.addEventListener("click", () => {
    show_all_recent = !show_all_recent;
    if (last_doc) showRecent(list(last_doc.recent));
  });

  page.forget.addEventListener("click", () => {
    forgetToken();
    clearData();
    page.forget.hidden = true;
    setState("loading");
    poll();
  });

  // --- formatting --------------------------------------------------------

  const DASH = "–";

  function pad(number) {
    return String(number).padStart(2, "0");
  }

  function clock(iso) {
    if (!iso) return DASH;
    const when = new Date(iso);
    if (Number.isNaN(when.getTime())) return DASH;
    return pad(when.getHours()) + ":" + pad(when.getMinutes()) + ":" + pad(when.getSeconds());
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return DASH;
    if (seconds < 1) return Math.round(seconds * 1000) + " ms";
    if (seconds < 60) return seconds.toFixed(1) + " s";
    const whole = Math.floor(seconds);
    if (whole < 3600) return Math.floor(whole / 60) + " m " + pad(whole % 60) + " s";
    if (whole < 86400) return Math.floor(whole / 3600) + " h " + pad(Math.floor(whole / 60) % 60) + " m";
    return Math.floor(whole / 86400) + " d " + (Math.floor(whole / 3600) % 24) + " h";
  }

  // Decimal units, as `ollama ps` shows them.
  function bytes(count) {
    if (count === null || count === undefined) return null;
    const units = ["B", "KB", "MB", "GB", "TB"];
    let value = count;
    let unit = 0;
    while (value >= 1000 && unit < units.length - 1) {
      value /= 1000;
      unit += 1;
    }
    return (unit === 0 ? String(value) : value.toFixed(1)) + " " + units[unit];
  }

  function count(value) {
    return value === null || value === undefined ? DASH : String(value);
  }

  function rate(value) {
    return value === null || value === undefined ? DASH : value.toFixed(1);
  }

  function plural(number, one, many) {
    return number + " " + (number === 1 ? one : many);
  }

  // --- building blocks ---------------------------------------------------

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function addCell(row, className, text) {
    const cell = element("td", className, text);
    row.append(cell);
    return cell;
  }

  function emptyRow(body, columns, text) {
    const row = element("tr", "empty");
    addCell(row, null, text).colSpan = columns;
    body.append(row);
  }

  function list(value) {
    return Array.isArray(value) ? value : [];
  }

  // --- the document, part by part ----------------------------------------

  function show(doc) {
    const about = doc.foreman || {};
    last_doc = doc;
    shown_at = about.now || new Date().toISOString();
    setState("ok");
    page.form.hidden = true;
    page.message.hidden = true;
    page.main.hidden = false;
    page.main.classList.remove("stale");
    page.forget.hidden = !storedToken();
    showSummary(about, doc.queue || {});
    showTargets(list(doc.targets), about.now);
    showClients(list(doc.clients));
    showRunning(list(doc.in_flight));
    showCharts(list(doc.history));
    showRecent(list(doc.recent));
  }

  function showSummary(about, queue) {
    const parts = [
      plural(queue.waiting || 0, "request waiting", "requests waiting"),
      (queue.in_flight || 0) + " running, " + (queue.concurrency || 1) + " at a time",
      "updated " + clock(about.now),
    ];
    if (about.version) parts.push("foreman " + about.version);
    const nodes = [element("span", "queue-line", parts.join(" · "))];
    if (queue.paused) nodes.push(element("span", "paused", "queue paused"));
    page.summary.replaceChildren(...nodes);
  }

  function showTargets(targets, now) {
    const cards = targets.map((target) => {
      const up = target.reachable !== false;
      const card = element("article", "target-card " + (up ? "up" : "away"));
      card.dataset.target = target.name;
      const head = element("div", "target-head");
      head.append(element("h3", "name", target.name), element("span", "badge", up ? "up" : "away"));
      card.append(head, element("p", "url", target.url));
      const facts = [
        plural(target.models || 0, "model", "models"),
        "running " + (target.in_flight || 0) + " of " + (target.concurrency || 1),
      ];
      if (target.last_poll) facts.push("checked " + clock(target.last_poll));
      card.append(element("p", "facts", facts.join(" · ")));
      if (target.last_error) card.append(element("p", "error", target.last_error));
      if (target.wake) card.append(wakeLine(target.wake));
      card.append(residentList(target.resident, now));
      return card;
    });
    if (cards.length === 0) cards.push(element("p", "empty", "No targets."));
    page.targets.replaceChildren(...cards);
  }

  function wakeLine(wake) {
    let text = "Wakes with Wake-on-LAN (" + wake.mac + " via " + wake.address + ")";
    if (wake.waking) text += "; waking now, " + plural(wake.packets_sent || 0, "packet", "packets") + " sent";
    return element("p", "wake", text);
  }

  function residentList(resident, now) {
    const box = element("div", "resident");
    box.append(element("h4", null, "In memory"));
    if (!Array.isArray(resident)) {
      box.append(element("p", "empty", "Not known: foreman asks the target only while model affinity is on."));
      return box;
    }
    if (resident.length === 0) {
      box.append(element("p", "empty", "No model loaded."));
      return box;
    }
    const items = element("ul");
    for (const model of resident) {
      const item = element("li");
      item.dataset.model = model.name;
      item.append(element("span", "model", model.name));
      const size = bytes(model.size);
      const details = [];
      if (size !== null) details.push(size);
      if (model.size && model.size_vram !== null && model.size_vram !== undefined) {
        details.push(Math.round((100 * model.size_vram) / model.size) + "% on GPU");
      }
      const expiry = expires(model.expires_at, now);
      if (expiry) details.push(expiry);
      if (details.length) item.append(element("span", "details", details.join(" · ")));
      items.append(item);
    }
    box.append(items);
    return box;
  }

  function expires(at, now) {
    if (!at) return null;
    const left = (Date.parse(at) - Date.parse(now || new Date().toISOString())) / 1000;
    // Past its expiry, a model is on its way out: nothing useful to add.
    if (!Number.isFinite(left) || left <= 0) return null;
    // Ollama reports "keep loaded forever" as an expiry centuries away.
    if (left > 7 * 86400) return "kept loaded";
    return "unloads in " + duration(left);
  }

  function showClients(clients) {
    page.clients.replaceChildren();
    for (const client of clients) {
      const row = element("tr", client.waiting > 0 ? "has-waiting" : null);
      row.dataset.client = client.name;
      addCell(row, "name", client.name);
      addCell(row, "num weight", client.weight === undefined ? DASH : String(client.weight));
      addCell(row, "num waiting", count(client.waiting));
      addCell(row, "num running", count(client.in_flight));
      addCell(row, "num requests", count(client.requests));
      addCell(row, "num service", duration(client.service_seconds));
      page.clients.append(row);
    }
    if (clients.length === 0) emptyRow(page.clients, 6, "No client has sent anything in the last hour.");
  }

  function showRunning(running) {
    page.running.replaceChildren();
    for (const run of running) {
      const row = element("tr");
      row.dataset.client = run.client;
      addCell(row, "name", run.client);
      addCell(row, "model", run.model || DASH);
      addCell(row, "target", run.target || DASH);
      addCell(row, "route", run.route);
      addCell(row, "num elapsed", duration(run.elapsed));
      addCell(row, "num waited", duration(run.queue_wait));
      addCell(row, "num tokens", count(run.tokens));
      page.running.append(row);
    }
    if (running.length === 0) emptyRow(page.running, 7, "Nothing is running.");
  }

  function showRecent(recent) {
    page.recent.replaceChildren();
    const shown = show_all_recent ? recent : recent.slice(0, RECENT_SHOWN);
    page.more.hidden = recent.length <= RECENT_SHOWN;
    page.more.textContent = show_all_recent ? "Show the last " + RECENT_SHOWN : "Show all " + recent.length;
    for (const done of shown) {
      const row = element("tr");
      row.dataset.client = done.client;
      addCell(row, "time", clock(done.time));
      addCell(row, "name", done.client);
      addCell(row, "model", done.model || DASH);
      addCell(row, "num status " + (done.status < 400 ? "good" : "bad"), count(done.status));
      addCell(row, "num waited", duration(done.queue_wait));
      addCell(row, "num took", duration(done.duration));
      addCell(row, "num tokens", count(done.tokens));
      addCell(row, "num rate", rate(done.tokens_per_second));
      page.recent.append(row);
    }
    if (recent.length === 0) emptyRow(page.recent, 8, "No requests yet.");
  }

  // --- charts: the last hour, one point a minute, oldest first ------------

  const CHARTS = [
    { key: "queue_depth", title: "Queue depth", shape: "bars", format: String },
    { key: "tokens_per_second", title: "Tokens per second", shape: "line", format: rate },
    { key: "model_loads", title: "Model loads", shape: "bars", format: String },
  ];

  function svg(tag, attributes) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, String(value));
    return node;
  }

  function showCharts(history) {
    page.charts.replaceChildren(...CHARTS.map((chart) => drawChart(chart, history)));
  }

  function drawChart(chart, history) {
    const values = history.map((point) => Number(point[chart.key]) || 0);
    const now = values.length ? values[values.length - 1] : 0;
    const max = values.length ? Math.max(...values) : 0;

    const figure = element("figure", "chart");
    figure.dataset.chart = chart.key;
    const caption = element("figcaption");
    caption.append(
      element("span", "chart-title", chart.title),
      element("span", "chart-now", "now " + chart.format(now)),
      element("span", "chart-max", "max " + chart.format(max)),
    );

    const picture = svg("svg", {
      viewBox: "0 0 " + CHART_WIDTH + " " + CHART_HEIGHT,
      preserveAspectRatio: "none",
      role: "img",
      "aria-label": chart.title + " over the last hour: now " + chart.format(now) + ", at most " + chart.format(max),
      "data-chart": chart.key,
    });
    const label = svg("title");
    label.textContent = chart.title + ", one point a minute over the last hour";
    picture.append(label);
    // Headroom above the highest point, so it does not touch the frame.
    const scale = max > 0 ? (CHART_HEIGHT - 6) / max : 0;
    const step = values.length ? CHART_WIDTH / values.length : CHART_WIDTH;
    if (chart.shape === "bars") {
      values.forEach((value, index) => {
        if (value <= 0) return;
        const height = Math.max(value * scale, 1);
        picture.append(svg("rect", {
          class: "bar",
          x: (index * step + step * 0.15).toFixed(2),
          y: (CHART_HEIGHT - height).toFixed(2),
          width: (step * 0.7).toFixed(2),
          height: height.toFixed(2),
        }));
      });
    } else if (values.length) {
      const points = values.map((value, index) =>
        ((index + 0.5) * step).toFixed(2) + "," + (CHART_HEIGHT - value * scale).toFixed(2));
      const first = (0.5 * step).toFixed(2);
      const last = ((values.length - 0.5) * step).toFixed(2);
      picture.append(
        svg("polygon", { class: "area", points: first + "," + CHART_HEIGHT + " " + points.join(" ") + " " + last + "," + CHART_HEIGHT }),
        svg("polyline", { class: "line", points: points.join(" "), "vector-effect": "non-scaling-stroke" }),
      );
    }
    picture.append(svg("line", {
      class: "axis", x1: 0, y1: CHART_HEIGHT - 0.5, x2: CHART_WIDTH, y2: CHART_HEIGHT - 0.5,
      "vector-effect": "non-scaling-stroke",
    }));

    const ticks = element("div", "ticks");
    ticks.append(element("span", null, "an hour ago"), element("span", null, "now"));
    figure.append(caption, picture, ticks);
    return figure;
  }

  poll();
})();
