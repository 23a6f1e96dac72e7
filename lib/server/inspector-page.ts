// The inspector page: plain HTML and a script that uses the package's own browser client. Served as is (no
// build step, no framework). Everything shown that came from a client or the application (frames, paths, users,
// close reasons) is set as text, never as markup.

export const page = (base: string): string => `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>hapi-pulse inspector</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1d2330; background: #f4f6f9; }
header { background: #1d2330; color: #fff; padding: 8px 16px; display: flex; gap: 16px; align-items: baseline; }
header h1 { font-size: 16px; margin: 0; }
header span { opacity: .75; font-size: 12px; }
main { display: grid; grid-template-columns: minmax(380px, 1fr) minmax(380px, 1fr); gap: 12px; padding: 12px; }
section { background: #fff; border: 1px solid #d8dde6; border-radius: 6px; padding: 10px 12px; min-width: 0; }
h2 { font-size: 14px; margin: 0 0 8px; }
h3 { font-size: 13px; margin: 12px 0 4px; color: #4a5366; }
label { display: block; font-size: 12px; color: #4a5366; margin-top: 6px; }
input, textarea, select { font: 12px ui-monospace, monospace; width: 100%; box-sizing: border-box; padding: 4px; }
textarea { height: 44px; }
button { font-size: 12px; margin: 6px 4px 0 0; padding: 3px 10px; }
.row { display: flex; gap: 6px; }
.row > * { flex: 1; }
.row > .narrow { flex: 0 0 90px; }
.status { font-size: 12px; margin-top: 6px; }
.ok { color: #1c7c3c; } .bad { color: #b3261e; }
table { border-collapse: collapse; width: 100%; font: 12px ui-monospace, monospace; }
th, td { text-align: left; padding: 2px 6px; border-bottom: 1px solid #eef0f4; vertical-align: top; }
th { color: #4a5366; font-weight: 600; }
td.frame { word-break: break-all; white-space: pre-wrap; }
tr.out td.dir { color: #1f5fbf; } tr.in td.dir { color: #1c7c3c; }
.log { max-height: 420px; overflow: auto; }
.cards { display: flex; flex-wrap: wrap; gap: 6px; }
.card { border: 1px solid #d8dde6; border-radius: 4px; padding: 4px 8px; min-width: 80px; }
.card b { display: block; font-size: 16px; }
.card span { font-size: 11px; color: #4a5366; }
.muted { color: #8a93a6; }
</style>
</head>
<body>
<header><h1>hapi-pulse inspector</h1><span id="node"></span><span id="refreshed"></span></header>
<main>
<section id="console">
<h2>Client console</h2>
<div class="row"><div><label for="url">WebSocket URL</label><input id="url"></div></div>
<label for="auth">Auth for hello: a token, or JSON such as {"headers":{"authorization":"..."}} (empty: none)</label>
<textarea id="auth"></textarea>
<button id="token">Get a token</button><button id="connect">Connect</button><button id="disconnect">Disconnect</button>
<div class="status" id="status">Not connected</div>
<h3>Request</h3>
<div class="row"><select id="method" class="narrow"><option>GET</option><option>POST</option><option>PUT</option><option>PATCH</option><option>DELETE</option></select><input id="path" placeholder="/path"></div>
<label for="payload">Payload (JSON, optional)</label>
<textarea id="payload"></textarea>
<button id="request">Send request</button>
<h3>Subscriptions</h3>
<div class="row"><input id="sub" placeholder="/path/to/subscribe"></div>
<button id="subscribe">Subscribe</button><button id="unsubscribe">Unsubscribe</button>
<div id="subs" class="muted status">none</div>
<h3>Frames <button id="clear">Clear</button></h3>
<div class="log"><table><thead><tr><th>time</th><th></th><th>frame</th></tr></thead><tbody id="frames"></tbody></table></div>
</section>
<section id="operator">
<h2>This node <label style="display:inline"><input type="checkbox" id="live" checked style="width:auto"> live</label></h2>
<div class="cards" id="totals"></div>
<h3>Sockets <span class="muted" id="sockets-note"></span></h3>
<table><thead><tr><th>socket</th><th>user</th><th>address</th><th>since</th><th>subs</th><th>in flight</th></tr></thead><tbody id="sockets"></tbody></table>
<h3>Users <span class="muted" id="users-note"></span></h3>
<table><thead><tr><th>user</th><th>sockets</th></tr></thead><tbody id="users"></tbody></table>
<h3>Paths <span class="muted" id="paths-note"></span></h3>
<table><thead><tr><th>path</th><th>route</th><th>subscribers</th><th>presence members</th></tr></thead><tbody id="paths"></tbody></table>
<h3>Limits hit</h3>
<table><thead><tr><th>limit</th><th>times</th></tr></thead><tbody id="limits"></tbody></table>
<h3>Refused upgrades</h3>
<table><thead><tr><th>reason</th><th>times</th></tr></thead><tbody id="upgrades"></tbody></table>
<h3>Traffic</h3>
<table><thead><tr><th>type</th><th>in</th><th>bytes in</th><th>out</th><th>bytes out</th></tr></thead><tbody id="traffic"></tbody></table>
<h3>Recent disconnects</h3>
<table><thead><tr><th>time</th><th>socket</th><th>user</th><th>code</th><th>reason</th><th>lasted</th></tr></thead><tbody id="disconnects"></tbody></table>
</section>
</main>
<script src="${base}/client.js"></script>
<script src="${base}/inspector.js"></script>
</body>
</html>
`;

// No template literals below: this is the page's script, as text.
export const script = (base: string): string => `'use strict';
(function () {

var base = ${JSON.stringify(base)};
var maxFrames = 500;
var $ = function (id) { return document.getElementById(id); };
var client = null;
var closeNames = { 1000: 'normal', 1001: 'going away', 1002: 'protocol error', 1003: 'unsupported data', 1005: 'no status',
    1006: 'abnormal', 1008: 'policy violation', 1009: 'message too big', 1011: 'server error', 1013: 'try again',
    4000: 'hello timeout', 4001: 'heartbeat timeout', 4002: 'auth expired', 4003: 'slow consumer', 4004: 'rate limited', 4005: 'resync' };

var time = function (date) { return date.toISOString().slice(11, 23); };

var cell = function (row, text, className) {
    var td = document.createElement('td');
    td.textContent = text === null || text === undefined ? '' : String(text);
    if (className) { td.className = className; }
    row.appendChild(td);
    return td;
};

var fill = function (id, rows, empty) {
    var body = $(id);
    body.textContent = '';
    if (!rows.length) {
        var tr = document.createElement('tr');
        cell(tr, empty || 'none', 'muted');
        body.appendChild(tr);
        return;
    }
    rows.forEach(function (values) {
        var tr = document.createElement('tr');
        values.forEach(function (value) { cell(tr, value); });
        body.appendChild(tr);
    });
};

var status = function (text, ok) {
    $('status').textContent = text;
    $('status').className = 'status ' + (ok ? 'ok' : 'bad');
};

// ---- Frames: every frame in and out, with its time ----

var frame = function (direction, data) {
    var body = $('frames');
    var tr = document.createElement('tr');
    tr.className = direction;
    cell(tr, time(new Date()));
    cell(tr, direction === 'out' ? '\\u2192' : '\\u2190', 'dir');
    cell(tr, typeof data === 'string' ? data : '(binary frame)', 'frame');
    body.appendChild(tr);
    while (body.children.length > maxFrames) { body.removeChild(body.firstChild); }
    tr.scrollIntoView({ block: 'nearest' });
};

var Traced = function (url, protocols) {
    var ws = new WebSocket(url, protocols);
    ws.addEventListener('message', function (event) { frame('in', event.data); });
    var send = ws.send;
    ws.send = function (data) { frame('out', data); return send.call(ws, data); };
    return ws;
};

HapiPulse.Client.WebSocket = Traced;

// ---- Client console ----

var parseAuth = function () {
    var text = $('auth').value.trim();
    if (!text) { return undefined; }
    return text[0] === '{' ? JSON.parse(text) : text;
};

var showSubs = function () {
    var subs = client ? client.subscriptions() : [];
    $('subs').textContent = subs.length ? subs.join('  ') : 'none';
    $('subs').className = subs.length ? 'status' : 'status muted';
};

var failed = function (what) {
    return function (err) { status(what + ' failed: ' + (err && err.message || err) + (err && err.statusCode ? ' (' + err.statusCode + ')' : ''), false); };
};

$('url').value = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host;

$('token').onclick = function () {
    fetch(config.auth ? config.auth.endpoint : '/nes/auth', { credentials: 'same-origin' }).then(function (res) { return res.json(); }).then(function (body) {
        if (body.token) { $('auth').value = body.token; status('Got a token', true); }
        else { status('No token: ' + JSON.stringify(body), !!body.status && body.status === 'authenticated'); }
    }).catch(failed('Token request'));
};

$('connect').onclick = function () {
    var auth;
    try { auth = parseAuth(); } catch (err) { return status('Auth is not valid JSON', false); }
    var previous = client;
    client = new HapiPulse.Client($('url').value);
    client.onConnect = function () { status('Connected as socket ' + client.id, true); showSubs(); };
    client.onDisconnect = function (willReconnect, log) { status('Disconnected (' + log.code + (log.explanation ? ' ' + log.explanation : '') + ')' + (willReconnect ? ', reconnecting' : ''), false); };
    client.onError = function (err) { status('Error: ' + err.message, false); };
    client.onUpdate = function () { };
    var connect = function () { return client.connect({ auth: auth, reconnect: true, delay: 500, maxDelay: 5000 }); };
    (previous ? previous.disconnect() : Promise.resolve()).then(connect).catch(failed('Connect'));
};

$('disconnect').onclick = function () {
    if (client) { client.disconnect().then(showSubs); }
};

$('request').onclick = function () {
    if (!client) { return status('Connect first', false); }
    var payload;
    try { payload = $('payload').value.trim() ? JSON.parse($('payload').value) : undefined; } catch (err) { return status('Payload is not valid JSON', false); }
    client.request({ method: $('method').value, path: $('path').value, payload: payload }).then(function (res) {
        status('Request answered ' + res.statusCode, true);
    }).catch(failed('Request'));
};

$('subscribe').onclick = function () {
    if (!client) { return status('Connect first', false); }
    var path = $('sub').value;
    client.subscribe(path, function () { }).then(function () { status('Subscribed to ' + path, true); showSubs(); }).catch(failed('Subscribe'));
};

$('unsubscribe').onclick = function () {
    if (!client) { return status('Connect first', false); }
    var path = $('sub').value;
    client.unsubscribe(path, null).then(function () { status('Unsubscribed from ' + path, true); showSubs(); }).catch(failed('Unsubscribe'));
};

$('clear').onclick = function () { $('frames').textContent = ''; };

// ---- Operator view: this node, refreshed every second ----

var config = {};

var card = function (value, name) {
    var div = document.createElement('div');
    div.className = 'card';
    var b = document.createElement('b');
    b.textContent = String(value);
    var span = document.createElement('span');
    span.textContent = name;
    div.appendChild(b);
    div.appendChild(span);
    return div;
};

var note = function (id, list) {
    $(id).textContent = list.total > list.shown.length ? '(' + list.shown.length + ' of ' + list.total + ')' : '(' + list.total + ')';
};

var duration = function (ms) {
    return ms < 1000 ? ms + ' ms' : ms < 60000 ? (ms / 1000).toFixed(1) + ' s' : Math.round(ms / 60000) + ' min';
};

// A presence path's members on this node, and its anonymous sockets when there are any.
var members = function (presence) {
    return presence === null ? '-' : presence.members + (presence.anonymous ? ' + ' + presence.anonymous + ' anonymous' : '');
};

var render = function (state) {
    config = state;
    $('node').textContent = 'node ' + state.node.id + ' \\u00b7 metrics ' + (state.metrics.exporting ? 'exported' : 'not exported (no OpenTelemetry SDK)');
    $('refreshed').textContent = 'refreshed ' + time(new Date());
    var totals = $('totals');
    totals.textContent = '';
    [['sockets', state.totals.sockets], ['users', state.users.total], ['paths', state.totals.topics], ['subscriptions', state.totals.subscriptions], ['pending upgrades', state.totals.pendingUpgrades]].forEach(function (pair) {
        totals.appendChild(card(pair[1], pair[0]));
    });
    note('sockets-note', state.sockets);
    fill('sockets', state.sockets.shown.map(function (s) { return [s.id, s.user === null ? '-' : s.user, s.remoteAddress, time(new Date(s.connectedAt)), s.subscriptions, s.inFlight]; }));
    note('users-note', state.users);
    fill('users', state.users.shown.map(function (u) { return [u.user, u.sockets]; }));
    note('paths-note', state.paths);
    fill('paths', state.paths.shown.map(function (p) { return [p.path, p.route, p.subscribers, members(p.presence)]; }));
    fill('limits', Object.keys(state.limits).map(function (name) { return [name, state.limits[name]]; }));
    fill('upgrades', Object.keys(state.upgrades).map(function (name) { return [name, state.upgrades[name]]; }));
    fill('traffic', Object.keys(state.traffic).filter(function (type) {
        var t = state.traffic[type];
        return t.received || t.sent;
    }).map(function (type) {
        var t = state.traffic[type];
        return [type, t.received, t.receivedBytes, t.sent, t.sentBytes];
    }));
    fill('disconnects', state.disconnects.map(function (d) {
        return [time(new Date(d.at)), d.socket, d.user === null ? '-' : d.user, d.code + (closeNames[d.code] ? ' ' + closeNames[d.code] : ''), d.reason, duration(d.duration)];
    }));
};

var refresh = function () {
    fetch(base + '/state', { credentials: 'same-origin', headers: { accept: 'application/json' } }).then(function (res) {
        if (!res.ok) { throw new Error('state: ' + res.status); }
        return res.json();
    }).then(render).catch(function (err) {
        $('refreshed').textContent = 'refresh failed: ' + err.message;
    }).then(function () {
        setTimeout(function () { if ($('live').checked) { refresh(); } else { $('live').onchange = function () { $('live').onchange = null; refresh(); }; } }, 1000);
    });
};

refresh();
})();
`;
