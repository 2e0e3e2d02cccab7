// The shop's page: sign-in, the live catalog, the order form, "My orders"
// for customers and the sales dashboard for staff.
//
// A file of its own: the content security policy (default-src 'self')
// runs no inline script. Everything the server sends is put on the page
// with textContent, never as HTML.
//
// Credentials: a bearer token sent in the Authorization header of every API
// call and live stream, never a cookie (so a request another site makes
// carries nothing). The token is kept in memory and in sessionStorage, so
// reloading the tab keeps you signed in; it is gone when the tab closes and
// is not shared with other tabs.
"use strict";

(() => {
  const $ = (sel) => document.querySelector(sel);
  const money = (cents) => (Number(cents || 0) / 100).toFixed(2);
  const SESSION_KEY = "strata-shop.session";
  const CUSTOMER = "customer";
  const STAFF = "staff";
  /** Statuses an order never leaves. */
  const FINAL = new Set(["shipped", "rejected", "cancelled"]);
  /**
   * Orders followed live at once. Streams over HTTP/1.1 hold a connection
   * each and a browser opens about six per origin: the catalog, the order
   * list and three orders leave one for the page's requests.
   */
  const MAX_ORDER_STREAMS = 3;
  /** How often orders that are not followed live are read again (ms). */
  const REFRESH_UNFOLLOWED_MS = 15000;

  // ---------------------------------------------------------------- session

  /** `{token, subject, roles, expiresAt}` while signed in, else null.
   *  `roles` is null when a pasted token does not say (the server decides). */
  let session = null;
  /** Bumped at every sign-in and sign-out: answers that arrive for an older
   *  session are dropped. */
  let generation = 0;
  let expiryTimer = null;
  /** The public catalog's stream (open whoever is signed in). */
  let catalogStream = null;

  function authHeaders() {
    return session ? { authorization: "Bearer " + session.token } : {};
  }

  function hasRole(role) {
    return !!session && (session.roles === null || session.roles.includes(role));
  }

  function loadSession() {
    try {
      const s = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
      const valid = s && typeof s.token === "string" && s.token
        && (s.roles === null || Array.isArray(s.roles))
        && (!s.expiresAt || s.expiresAt > Date.now());
      if (valid) {
        return s;
      }
    } catch (_) {
      // Storage unavailable or garbled: start signed out.
    }
    return null;
  }

  function storeSession(s) {
    try {
      if (s) sessionStorage.setItem(SESSION_KEY, JSON.stringify(s));
      else sessionStorage.removeItem(SESSION_KEY);
    } catch (_) {
      // Storage unavailable: the session lives in memory only.
    }
  }

  /** Signs in (`s`) or out (null); `notice` says why, in the sign-in bar. */
  function setSession(s, notice) {
    session = s;
    generation++;
    storeSession(s);
    clearTimeout(expiryTimer);
    expiryTimer = null;
    if (s && s.expiresAt) {
      const token = s.token;
      const wait = Math.min(Math.max(s.expiresAt - Date.now(), 0), 2147483647);
      expiryTimer = setTimeout(() => dropSession(token, "your session expired; sign in again"), wait);
    }
    stopPrivate();
    renderAuth();
    $("#auth-error").textContent = notice || "";
    // The catalog is public: it goes on from where it was, with the new
    // credentials.
    if (catalogStream) catalogStream.restart();
    startPrivate();
  }

  /** Signs out when the server refused `token` (if it is still in use). */
  function dropSession(token, message) {
    if (session && session.token === token) {
      setSession(null, "Signed out: " + message);
    }
  }

  /** The claims of a JWT, for display only (the server checks the token). */
  function claimsOf(token) {
    try {
      const part = token.split(".")[1];
      const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
      const bytes = Uint8Array.from(atob(b64 + "===".slice((b64.length + 3) % 4)), (c) => c.charCodeAt(0));
      const claims = JSON.parse(new TextDecoder().decode(bytes));
      return claims && typeof claims === "object" ? claims : {};
    } catch (_) {
      return {};
    }
  }

  function sessionFromToken(token) {
    const claims = claimsOf(token);
    let roles = null;
    if (Array.isArray(claims.roles)) roles = claims.roles.map(String);
    else if (typeof claims.role === "string") roles = [claims.role];
    else if (typeof claims.scope === "string") roles = claims.scope.split(" ").filter(Boolean);
    return {
      token,
      subject: typeof claims.sub === "string" && claims.sub ? claims.sub : null,
      roles,
      expiresAt: typeof claims.exp === "number" ? claims.exp * 1000 : null,
    };
  }

  // ------------------------------------------------------------- requests

  function newKey() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return "10000000-1000-4000-8000-100000000000".replace(/[018]/g, (c) =>
      (c ^ (crypto.getRandomValues(new Uint8Array(1))[0] & (15 >> (c / 4)))).toString(16));
  }

  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function errorOf(resp) {
    const json = await resp.json().catch(() => null);
    const message = (json && json.error && json.error.message) || `HTTP ${resp.status}`;
    return new HttpError(resp.status, message);
  }

  /**
   * A call to the page's origin with the session's credentials; the JSON
   * answer, or an HttpError carrying the server's message. A POST carries
   * `key` as its Idempotency-Key (a new one if none is given). A 401 for the
   * session's token signs out.
   */
  async function api(method, path, body, key) {
    const token = session && session.token;
    const headers = { accept: "application/json", ...authHeaders() };
    const init = { method, headers, cache: "no-store", credentials: "omit" };
    if (method === "POST") {
      headers["content-type"] = "application/json";
      headers["idempotency-key"] = key || newKey();
      init.body = body === undefined ? "" : JSON.stringify(body);
    }
    const resp = await fetch(path, init);
    if (!resp.ok) {
      const err = await errorOf(resp);
      if (resp.status === 401 && token) dropSession(token, err.message);
      throw err;
    }
    return resp.json().catch(() => ({}));
  }

  // ----------------------------------------------------------- live streams

  const streams = new Set();

  /**
   * A Server-Sent Events stream read with fetch(), so it can send the
   * Authorization header (EventSource cannot). It parses `event:`, `id:`,
   * `data:` and `retry:` lines (a blank line ends an event, `:` lines are
   * comments), hands each `state` to `onState`, and reconnects after an
   * error or the server's `close`, with a growing delay, resuming from the
   * last id it got (Last-Event-ID). A 401 for the session's token signs
   * out; otherwise 400, 401, 403 and 404 are final: the stream ends and
   * `onDenied(status, message)` says why.
   */
  class LiveStream {
    constructor(path, { onState, onDenied }) {
      this.path = path;
      this.onState = onState;
      this.onDenied = onDenied || (() => {});
      this.lastId = null;
      this.retryMs = 1000;
      this.state = "connecting";
      this.closed = false;
      this.controller = null;
      this.wake = null;
      this.now = false;
      streams.add(this);
      updateConnection();
      this.run();
    }

    /** Ends the stream for good. */
    close() {
      this.closed = true;
      if (this.controller) this.controller.abort();
      if (this.wake) this.wake();
      streams.delete(this);
      updateConnection();
    }

    /** Reconnects at once (with the current credentials), from the last id. */
    restart() {
      this.now = true;
      if (this.controller) this.controller.abort();
      if (this.wake) this.wake();
    }

    setState(state) {
      this.state = state;
      updateConnection();
    }

    async run() {
      let failures = 0;
      while (!this.closed) {
        const controller = new AbortController();
        this.controller = controller;
        this.now = false;
        let reason = null;
        try {
          const token = session && session.token;
          const headers = { accept: "text/event-stream", ...authHeaders() };
          if (this.lastId !== null) headers["last-event-id"] = this.lastId;
          const resp = await fetch(this.path, {
            headers,
            signal: controller.signal,
            cache: "no-store",
            credentials: "omit",
          });
          if (!resp.ok) {
            const err = await errorOf(resp);
            if (resp.status === 401 && token) {
              // The token was refused: sign out (if it is still the
              // session's), which closes the session's streams; a public
              // one goes on with the credentials there are now.
              dropSession(token, err.message);
              if (this.closed) return;
              this.now = true;
              continue;
            }
            if ([400, 401, 403, 404].includes(resp.status)) {
              this.close();
              this.onDenied(resp.status, err.message);
              return;
            }
            throw err;
          }
          this.setState("open");
          reason = await this.read(resp.body.getReader(), () => { failures = 0; });
        } catch (err) {
          if (this.closed) return;
          if (!this.now) console.warn("live stream", this.path, err.message || err);
        }
        if (this.closed) return;
        this.setState("down");
        // "more": the server sends a large view in parts; go on at once.
        let delay = 0;
        if (!this.now && reason !== "more") {
          delay = Math.min(30000, this.retryMs * 2 ** Math.min(failures, 5));
          delay = delay * (0.8 + Math.random() * 0.4);
          failures++;
        }
        if (delay > 0) {
          await new Promise((resolve) => {
            this.wake = resolve;
            setTimeout(resolve, delay);
          });
          this.wake = null;
        }
      }
    }

    /** Reads events until the response ends; returns the `close` reason. */
    async read(reader, progressed) {
      const decoder = new TextDecoder();
      let buffer = "";
      let type = "";
      let data = [];
      let id = null;
      let reason = null;
      const line = (text) => {
        if (text === "") {
          // A blank line ends the event.
          if (id !== null) this.lastId = id;
          if (data.length) {
            const r = this.dispatch(type || "message", data.join("\n"));
            if (r !== undefined) reason = r;
            progressed();
          }
          type = "";
          data = [];
          id = null;
          return;
        }
        if (text.startsWith(":")) return; // a comment (keep-alive)
        const colon = text.indexOf(":");
        const field = colon < 0 ? text : text.slice(0, colon);
        let value = colon < 0 ? "" : text.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") type = value;
        else if (field === "data") data.push(value);
        else if (field === "id" && !value.includes("\0")) id = value;
        else if (field === "retry" && /^\d+$/.test(value)) this.retryMs = Math.max(100, Number(value));
      };
      for (;;) {
        const { value, done } = await reader.read();
        buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
        // Lines end in "\r\n", "\r" or "\n". A "\r" at the end may be half
        // of a "\r\n" split between reads: that line waits for the next.
        const held = !done && buffer.endsWith("\r");
        const lines = (held ? buffer.slice(0, -1) : buffer).split(/\r\n|\r|\n/);
        buffer = lines.pop() + (held ? "\r" : "");
        lines.forEach(line);
        if (done) return reason; // an unfinished event is dropped
      }
    }

    /** Handles one event; returns the reason of a `close`. */
    dispatch(type, data) {
      if (this.closed) return undefined;
      try {
        if (type === "state") {
          this.onState(JSON.parse(data));
        } else if (type === "close") {
          const reason = String(JSON.parse(data).reason || "");
          console.info("stream closed by the server", this.path, reason);
          return reason;
        }
      } catch (err) {
        console.error("live stream", this.path, type, err);
      }
      return undefined;
    }
  }

  function updateConnection() {
    const all = [...streams];
    const open = all.filter((s) => s.state === "open").length;
    const el = $("#connection");
    const live = open === all.length;
    el.textContent = live ? `live (${open} streams)` : `reconnecting (${open}/${all.length})`;
    el.className = live ? "live" : "down";
  }

  // ------------------------------------------------------------- rendering

  function cell(text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }

  const rowId = (tbody, key) => tbody.id + "-" + key.replace(/[^A-Za-z0-9_-]/g, "_");

  function flash(tr) {
    tr.classList.remove("flash");
    void tr.offsetWidth; // restart the animation
    tr.classList.add("flash");
  }

  /** Keeps one row per key, sorted by key, flashing on change. */
  function upsertRow(tbody, key, cells) {
    const id = rowId(tbody, key);
    let tr = document.getElementById(id);
    if (!tr) {
      tr = document.createElement("tr");
      tr.id = id;
      tr.dataset.key = key;
      const next = [...tbody.children].find((r) => r.dataset.key > key);
      tbody.insertBefore(tr, next || null);
    }
    tr.replaceChildren(...cells);
    flash(tr);
    return tr;
  }

  function removeRow(tbody, key) {
    const tr = document.getElementById(rowId(tbody, key));
    if (tr) tr.remove();
  }

  // --------------------------------------------------------------- sign-in

  function renderAuth() {
    $("#auth-signed-out").hidden = !!session;
    $("#auth-signed-in").hidden = !session;
    $("#auth-subject").textContent = session ? session.subject || "(token)" : "";
    $("#auth-roles").textContent = session && session.roles ? session.roles.join(", ") : "";
    updateOrderForm();
  }

  async function loadSignInOptions() {
    let users = null;
    try {
      const resp = await fetch("/auth/demo-users", { cache: "no-store", credentials: "omit" });
      if (resp.ok) users = (await resp.json()).users;
    } catch (_) {
      // No demo sign-in: a token is pasted instead.
    }
    if (!Array.isArray(users)) {
      $("#token-form").hidden = false;
      return;
    }
    const box = $("#demo-users");
    box.replaceChildren(...users.map((u) => {
      const b = document.createElement("button");
      b.type = "button";
      b.dataset.user = String(u.name);
      b.append(String(u.name));
      const roles = document.createElement("span");
      roles.className = "role";
      roles.textContent = (u.roles || []).join(", ");
      b.append(roles);
      return b;
    }));
    $("#demo-sign-in").hidden = false;
  }

  $("#demo-users").addEventListener("click", async (e) => {
    const button = e.target.closest("button[data-user]");
    if (!button) return;
    $("#auth-error").textContent = "";
    const buttons = [...document.querySelectorAll("#demo-users button")];
    buttons.forEach((b) => { b.disabled = true; });
    try {
      const r = await api("POST", "/auth/demo-sign-in", { user: button.dataset.user });
      setSession({
        token: r.token,
        subject: r.subject,
        roles: Array.isArray(r.roles) ? r.roles : [],
        expiresAt: r.expires_in ? Date.now() + r.expires_in * 1000 : null,
      });
    } catch (err) {
      $("#auth-error").textContent = err.message;
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  });

  $("#token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("#token-input");
    const token = input.value.trim().replace(/^bearer\s+/i, "");
    input.value = "";
    if (!token) return;
    const s = sessionFromToken(token);
    if (s.expiresAt && s.expiresAt <= Date.now()) {
      $("#auth-error").textContent = "That token has expired.";
      return;
    }
    setSession(s);
  });

  $("#sign-out").addEventListener("click", () => setSession(null));

  // --------------------------------------------------------------- catalog

  function onCatalog({ key, doc }) {
    const select = $("#order-sku");
    let option = [...select.options].find((o) => o.value === key);
    if (!doc || doc.discontinued || !doc.name) {
      removeRow($("#catalog"), key);
      if (option) option.remove();
      updateOrderForm();
      return;
    }
    upsertRow($("#catalog"), key, [
      cell(doc.sku), cell(doc.name), cell(money(doc.price_cents), "num"),
      cell(doc.on_hand, "num"), cell(doc.available, "num available"),
    ]);
    if (!option) {
      option = new Option("", key);
      const next = [...select.options].find((o) => o.value > key);
      select.add(option, next || null);
    }
    option.textContent = `${doc.name} (${key}) — ${money(doc.price_cents)}, ${doc.available} available`;
    updateOrderForm();
  }

  // ------------------------------------------------------------ order form

  let submitting = false;
  /** The last order request that may not have been placed, sent again
   *  with the same Idempotency-Key if it is sent again as it was. */
  let unanswered = null;

  function updateOrderForm() {
    const customer = hasRole(CUSTOMER);
    const ready = customer && $("#order-sku").options.length > 0;
    for (const sel of ["#order-quantity", "#order-sku"]) $(sel).disabled = !customer;
    if (!submitting) $("#order-submit").disabled = !ready;
    $("#order-customer").textContent = session ? session.subject || "(token)" : "—";
    const hint = $("#order-hint");
    hint.hidden = customer;
    hint.textContent = session
      ? "Only customers place orders."
      : "Sign in as a customer to place orders.";
  }

  $("#order-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!hasRole(CUSTOMER)) return;
    $("#order-error").textContent = "";
    const body = { lines: [{ sku: $("#order-sku").value, quantity: Number($("#order-quantity").value) }] };
    const json = JSON.stringify(body);
    // Sent again after no answer: the same key, so it is placed only once.
    const key = unanswered && unanswered.json === json && unanswered.gen === generation
      ? unanswered.key
      : newKey();
    const gen = generation;
    submitting = true;
    $("#order-submit").disabled = true;
    try {
      const r = await api("POST", "/api/orders", body, key);
      unanswered = null;
      if (gen !== generation) return;
      const o = orderEntry(r.order_id);
      if (o.placedAt === null) o.placedAt = Date.now();
      selectOrder(o.id);
      renderOrders();
      followOrders();
    } catch (err) {
      // No answer, or the proxy's 5xx: it may have been placed all the same.
      const unsure = !(err instanceof HttpError) || err.status >= 500;
      unanswered = unsure ? { json, key, gen } : null;
      if (gen === generation) $("#order-error").textContent = err.message;
    } finally {
      submitting = false;
      updateOrderForm();
    }
  });

  // -------------------------------------------------------------- my orders

  /** The signed-in customer's orders: id -> entry. */
  const orders = new Map();
  let orderListStream = null;
  let selectedId = null;
  let placedCount = 0;

  function orderEntry(id) {
    let o = orders.get(id);
    if (!o) {
      o = {
        id, placedAt: null, seq: placedCount++, totalCents: null, doc: null,
        stream: null, row: null, fetching: false, busy: false, paid: false, error: "",
      };
      orders.set(id, o);
    }
    return o;
  }

  const statusOf = (o) => (o.doc ? o.doc.status : "placed…");

  /** Newest first. */
  function ordered() {
    return [...orders.values()].sort((a, b) => (b.placedAt - a.placedAt) || (b.seq - a.seq));
  }

  function onCustomerOrders({ doc }) {
    if (!doc || !Array.isArray(doc.orders)) return;
    for (const item of doc.orders) {
      const o = orderEntry(String(item.order_id));
      const at = Date.parse(item.placed_at);
      const placedAt = Number.isNaN(at) ? o.placedAt : at;
      if (o.row && (placedAt !== o.placedAt || item.total_cents !== o.totalCents)) {
        o.placedAt = placedAt;
        o.totalCents = item.total_cents;
        fillRow(o);
      } else {
        o.placedAt = placedAt;
        o.totalCents = item.total_cents;
      }
    }
    renderOrders();
    followOrders();
  }

  /** Follows the newest unfinished orders live; reads the others once. */
  function followOrders() {
    const list = ordered();
    const live = list.filter((o) => !o.error && !FINAL.has(statusOf(o))).slice(0, MAX_ORDER_STREAMS);
    for (const o of list) {
      const wanted = live.includes(o);
      if (wanted && !o.stream) {
        o.stream = followOrder(o);
      } else if (!wanted && o.stream) {
        o.stream.close();
        o.stream = null;
      }
      if (!wanted && !o.doc && !o.error) readOrder(o);
    }
  }

  function followOrder(o) {
    const gen = generation;
    return new LiveStream("/live/order_details/" + encodeURIComponent(o.id), {
      onState: ({ doc }) => {
        if (gen !== generation || !doc) return;
        o.doc = doc;
        renderOrder(o);
        if (FINAL.has(doc.status)) followOrders();
      },
      onDenied: (status, message) => {
        if (gen !== generation) return;
        o.stream = null;
        o.error = message;
        renderOrder(o);
      },
    });
  }

  /** Reads an order once (one that is not followed live). */
  async function readOrder(o) {
    if (o.fetching) return;
    o.fetching = true;
    const gen = generation;
    try {
      const r = await api("GET", "/orders/" + encodeURIComponent(o.id));
      if (gen !== generation) return;
      o.doc = r.data;
      renderOrder(o);
    } catch (err) {
      if (gen !== generation) return;
      if (err.status === 403) {
        o.error = err.message;
        renderOrder(o);
      }
      // 404: not in the view yet; read again later.
    } finally {
      o.fetching = false;
    }
  }

  setInterval(() => {
    for (const o of orders.values()) {
      if (!o.stream && !o.error && !FINAL.has(statusOf(o))) readOrder(o);
    }
  }, REFRESH_UNFOLLOWED_MS);

  function actionButton(label, action, id, disabled) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.dataset.action = action;
    b.dataset.orderId = id;
    b.disabled = disabled;
    return b;
  }

  function statusBadge(o) {
    const span = document.createElement("span");
    span.className = "status";
    span.dataset.status = o.doc ? o.doc.status : "";
    span.textContent = o.error ? "unavailable" : statusOf(o);
    if (o.error) span.title = o.error;
    return span;
  }

  /** Fills (and first creates) an order's row in "My orders". */
  function fillRow(o) {
    if (!o.row) {
      o.row = document.createElement("tr");
      o.row.id = rowId($("#my-orders"), o.id);
      o.row.dataset.orderId = o.id;
    }
    const status = statusOf(o);
    o.row.dataset.status = o.doc ? status : "";
    const link = document.createElement("button");
    link.type = "button";
    link.className = "link";
    link.dataset.action = "select";
    link.dataset.orderId = o.id;
    link.title = "show this order's history";
    const code = document.createElement("code");
    code.textContent = o.id;
    link.append(code);
    const idCell = document.createElement("td");
    idCell.append(link);
    const statusCell = document.createElement("td");
    statusCell.append(statusBadge(o));
    const actions = document.createElement("td");
    actions.className = "actions";
    if (status === "confirmed") actions.append(actionButton("Pay", "pay", o.id, o.busy || o.paid));
    if (status === "placed" || status === "confirmed") {
      actions.append(actionButton("Cancel", "cancel", o.id, o.busy));
    }
    const total = o.totalCents !== null ? o.totalCents : o.doc && o.doc.total_cents;
    o.row.replaceChildren(
      idCell,
      cell(o.placedAt === null ? "" : new Date(o.placedAt).toLocaleString()),
      cell(total === null || total === undefined ? "" : money(total), "num"),
      statusCell,
      actions,
    );
    flash(o.row);
  }

  /** Shows an order's new state, in its row and in the panel. */
  function renderOrder(o) {
    const fresh = !o.row;
    fillRow(o);
    if (fresh) placeRows();
    if (o.id === selectedId) renderSelected();
  }

  /** Shows every order (new ones get their row), newest first. */
  function renderOrders() {
    for (const o of orders.values()) if (!o.row) fillRow(o);
    placeRows();
    renderSelected();
  }

  function placeRows() {
    const tbody = $("#my-orders");
    const list = ordered();
    list.forEach((o, i) => {
      if (tbody.children[i] !== o.row) tbody.insertBefore(o.row, tbody.children[i] || null);
    });
    $("#my-orders-empty").hidden = list.length > 0;
  }

  function selectOrder(id) {
    selectedId = id;
    renderSelected();
  }

  /** The order panel under the form: the selected order and its history. */
  function renderSelected() {
    const o = selectedId && orders.get(selectedId);
    $("#order").hidden = !o;
    if (!o) {
      $("#order-id").textContent = "";
      $("#order-history").replaceChildren();
      delete $("#order-pay").dataset.orderId;
      return;
    }
    $("#order-id").textContent = o.id;
    const status = statusOf(o);
    const el = $("#order-status");
    el.textContent = o.error ? "unavailable" : status;
    el.dataset.status = o.doc ? status : "";
    const pay = $("#order-pay");
    pay.dataset.orderId = o.id;
    pay.hidden = !(status === "confirmed" || (!o.doc && !o.error));
    pay.disabled = status !== "confirmed" || o.busy || o.paid;
    const items = ((o.doc && o.doc.history) || []).map((h) => {
      const li = document.createElement("li");
      li.textContent = `${h.event_type} (position ${h.position})`;
      return li;
    });
    const note = (text) => {
      const li = document.createElement("li");
      li.textContent = text;
      items.push(li);
    };
    if (o.doc && o.doc.reason) note("reason: " + o.doc.reason);
    if (o.doc && o.doc.failed_payments) note(`failed payments: ${o.doc.failed_payments}`);
    if (o.error) note(o.error);
    $("#order-history").replaceChildren(...items);
  }

  async function orderAction(action, id, errorEl) {
    const o = orders.get(id);
    if (!o) return;
    const gen = generation;
    errorEl.textContent = "";
    o.busy = true;
    renderOrder(o);
    try {
      await api("POST", `/api/orders/${encodeURIComponent(id)}/${action}`);
      // Paid: the button stays off until the order's status moves on.
      if (action === "pay") o.paid = true;
    } catch (err) {
      if (gen === generation) errorEl.textContent = err.message;
    } finally {
      o.busy = false;
      if (gen === generation) renderOrder(o);
    }
  }

  $("#my-orders").addEventListener("click", (e) => {
    const b = e.target.closest("button[data-action]");
    if (!b) return;
    const id = b.dataset.orderId;
    if (b.dataset.action === "select") selectOrder(id);
    else orderAction(b.dataset.action, id, $("#my-orders-error"));
  });

  $("#order-pay").addEventListener("click", () => {
    const id = $("#order-pay").dataset.orderId;
    if (id) orderAction("pay", id, $("#order-error"));
  });

  // ------------------------------------------------------------- dashboard

  let dashboardStream = null;

  function onDashboard({ key, doc }) {
    if (!doc) {
      removeRow($("#dashboard"), key);
      return;
    }
    upsertRow($("#dashboard"), key, [
      cell(doc.day), cell(doc.sku), cell(doc.units, "num"), cell(doc.orders, "num"), cell(money(doc.revenue_cents), "num"),
    ]);
  }

  // ------------------------------------------------ what the session shows

  /** Opens what the signed-in user may follow. */
  function startPrivate() {
    if (!session) return;
    const gen = generation;
    if (hasRole(CUSTOMER) && session.subject) {
      $("#my-orders-section").hidden = false;
      $("#my-orders-empty").hidden = false;
      orderListStream = new LiveStream("/live/customer_orders/" + encodeURIComponent(session.subject), {
        onState: (msg) => { if (gen === generation) onCustomerOrders(msg); },
        onDenied: (status, message) => {
          if (gen === generation) $("#my-orders-error").textContent = message;
        },
      });
    }
    if (hasRole(STAFF)) {
      $("#dashboard-section").hidden = false;
      dashboardStream = new LiveStream("/live/sales_dashboard", {
        onState: (msg) => { if (gen === generation) onDashboard(msg); },
        onDenied: (status, message) => {
          if (gen !== generation) return;
          // A pasted token whose roles were unknown: not staff after all.
          if (session && session.roles === null) $("#dashboard-section").hidden = true;
          else $("#dashboard-error").textContent = message;
        },
      });
    }
  }

  /** Closes every stream of the session and forgets what it showed. */
  function stopPrivate() {
    for (const s of [orderListStream, dashboardStream]) if (s) s.close();
    orderListStream = null;
    dashboardStream = null;
    for (const o of orders.values()) if (o.stream) o.stream.close();
    orders.clear();
    selectedId = null;
    unanswered = null;
    $("#my-orders").replaceChildren();
    $("#dashboard").replaceChildren();
    for (const sel of ["#my-orders-error", "#dashboard-error", "#order-error"]) $(sel).textContent = "";
    $("#my-orders-section").hidden = true;
    $("#dashboard-section").hidden = true;
    renderSelected();
  }

  // ------------------------------------------------------------------ start

  const restored = loadSession();
  if (restored) setSession(restored);
  else renderAuth();
  catalogStream = new LiveStream("/live/catalog", { onState: onCatalog });
  loadSignInOptions();
})();
