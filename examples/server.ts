// The demo behind `npm start`: a hapi server with hapi-pulse, one route, one subscription and a
// publish loop, and a small chat at /chat (chat.ts). Open the printed pages in a browser, or connect any nes
// client to the printed URL. With DEMO_REDIS_URL set, nodes started on several ports share one Redis
// (DEMO_REDIS_PREFIX, default 'pulse-demo:').

import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import * as Hapi from '@hapi/hapi';

import type { Broker } from '../lib/index';
import * as Pulse from '../lib/index';
import * as Chat from './chat';

const page = `<!doctype html>
<meta charset="utf-8">
<title>hapi-pulse demo</title>
<h1>hapi-pulse demo</h1>
<p>This page loads the browser bundle, connects over a WebSocket, makes one request through the socket
(<code>GET /hello</code>, which answers whether it came over a WebSocket) and subscribes to
<code>/clock/seconds</code>, to which the server publishes every second. Each line below is one event.</p>
<p>The chat is at <a href="/chat">/chat</a>.</p>
<pre id="log"></pre>
<script src="/hapi-pulse.min.js"></script>
<script>
    const log = (line) => { document.getElementById('log').textContent += line + '\\n'; };
    const client = new HapiPulse.Client('ws://' + location.host);
    client.onConnect = () => log('connected as ' + client.id);
    client.onDisconnect = (willReconnect) => log('disconnected, reconnecting: ' + willReconnect);
    (async () => {
        await client.connect();
        log('GET /hello -> ' + JSON.stringify((await client.request('/hello')).payload));
        await client.subscribe('/clock/seconds', (message) => log('/clock/seconds: ' + JSON.stringify(message)));
    })().catch((err) => log('error: ' + err.message));
</script>`;

const start = async (): Promise<Hapi.Server> => {

    const server = Hapi.server({ host: process.env.HOST ?? '127.0.0.1', port: Number(process.env.PORT ?? 3000) });
    Chat.auth(server);

    // Only when asked: the Redis broker needs @redis/client, which the one-node demo does without
    const redisUrl = process.env.DEMO_REDIS_URL;
    const broker: Broker | undefined = redisUrl ? new (require('../lib/redis').RedisBroker)({ url: redisUrl, prefix: process.env.DEMO_REDIS_PREFIX ?? 'pulse-demo:' }) : undefined;
    await server.register({
        plugin: Pulse.plugin,
        options: { heartbeat: { interval: 10000, timeout: 5000 }, auth: { type: 'direct', index: true, route: { strategy: 'demo', mode: 'optional' } }, ...(broker ? { broker } : {}) }
    });

    Chat.setup(server);

    server.route({ method: 'GET', path: '/hello', handler: (request) => ({ hello: 'world', viaWebSocket: request.socket !== null }) });
    server.route({ method: 'GET', path: '/', handler: (_request, h) => h.response(page).type('text/html') });
    server.route({
        method: 'GET',
        path: '/hapi-pulse.min.js',
        handler: (_request, h) => h.response(readFileSync(join(__dirname, '..', 'browser', 'hapi-pulse.min.js'))).type('application/javascript')
    });

    server.subscription('/clock/{unit}');
    await server.start();
    await Chat.seed(server);

    let tick = 0;
    const timer = setInterval(() => {

        server.publish('/clock/seconds', { tick: ++tick, at: new Date().toISOString() }).catch((err) => console.error(err));
    }, 1000);

    server.events.on('stop', () => clearInterval(timer));

    const ws = server.info.uri.replace(/^http/, 'ws');
    console.log(`hapi-pulse demo listening on ${server.info.uri}`);
    console.log(`  browser:  open ${server.info.uri}/ and the chat at ${server.info.uri}/chat`);
    console.log(`  node:     const { Client } = require('hapi-pulse/client'); const client = new Client('${ws}');`);
    console.log(`            await client.connect(); await client.subscribe('/clock/seconds', console.log);`);
    console.log(`  @hapi/nes clients connect to ${ws} unchanged.`);
    return server;
};

start().then((server) => {

    const stop = () => server.stop({ timeout: 2000 }).then(() => process.exit(0));
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
}, (err) => {

    // A taken port is an everyday mistake: one line that says what to do, not a stack
    console.error(err.code === 'EADDRINUSE' ? `Port ${err.port} is already in use: stop what listens there or set PORT (PORT=3001 npm start)` : err);
    process.exit(1);
});
