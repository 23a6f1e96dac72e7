// permessage-deflate with server_no_context_takeover: what the frames on the wire look like for every kind of
// client (ours, stock nes, raw ws with and without compression, small windows), read from a tap on the server's
// TCP sockets; and that a compressed message cannot inflate past maxPayload.

import * as Crypto from 'node:crypto';
import * as Zlib from 'node:zlib';

import * as Code from '@hapi/code';
import type * as Hapi from '@hapi/hapi';
import * as Lab from '@hapi/lab';
import WebSocket from 'ws';

import { Client } from '../lib/client';

import { Nes, Peer, server, teardown, until, url, wait } from './helpers';
import type { NesClient } from './helpers';
import { tap } from './wiretap';
import type { Connection } from './wiretap';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { describe, it } = lab;

const defer = teardown(lab);

// A realistic JSON message of about `bytes` bytes: a page of catalogue items.
const sample = (bytes: number, seed = 1): { items: object[] } => {

    const items: object[] = [];
    const message = { items };
    for (let i = 0; JSON.stringify(message).length < bytes; ++i) {
        items.push({ id: seed * 1000 + i, sku: `SKU-${(seed * 7919 + i * 104729) % 100000}`, name: `Item ${i} of batch ${seed}`, price: ((i * 37) % 1000) / 10, currency: 'EUR', stock: (i * 13) % 50, tags: ['new', i % 2 ? 'sale' : 'regular'], updatedAt: new Date(1700000000000 + i * 60000).toISOString() });
    }

    return message;
};

const start = async (options: Record<string, unknown> = {}): Promise<{ srv: Hapi.Server; wires: Connection[] }> => {

    const srv = await server({ compression: true, ...options }, 'pulse', (s) => {

        s.route({ method: 'GET', path: '/size/{n}', handler: (request) => sample(Number(request.params.n)) });
    });

    srv.subscription('/news');
    const wires = tap(srv);
    await srv.start();
    defer(() => srv.stop());
    return { srv, wires };
};

const pulseClient = async (srv: Hapi.Server, received: unknown[]): Promise<Client> => {

    const client = new Client(url(srv));
    await client.connect();
    defer(() => client.disconnect());
    await client.subscribe('/news', (message) => received.push(message));
    return client;
};

const nesClient = async (srv: Hapi.Server, received: unknown[]): Promise<NesClient> => {

    const client = new Nes.Client(url(srv));
    await client.connect();
    defer(() => client.disconnect());
    await client.subscribe('/news', (message) => received.push(message));
    return client;
};

const peer = async (srv: Hapi.Server, options: WebSocket.ClientOptions = {}): Promise<Peer> => {

    const opened = await Peer.open(url(srv), options);
    defer(() => opened.close());
    await opened.hello({ subs: ['/news'] });
    return opened;
};

describe('compression', () => {

    describe('options', () => {

        it('is off by default: an offer is not answered and frames go uncompressed', async () => {

            const srv = await server();
            srv.subscription('/news');
            const wires = tap(srv);
            await srv.start();
            defer(() => srv.stop());

            const offering = await peer(srv);
            expect(offering.ws.extensions).to.equal('');
            await srv.publish('/news', sample(3000));
            await offering.count(2);
            expect(wires[0]!.handshake).to.not.include('Sec-WebSocket-Extensions');
            expect(wires[0]!.find('"pub"').compressed).to.be.false();
        });

        it('accepts true, an object with defaults for what it leaves out, and false (booleans as strings too, as every option)', async () => {

            for (const compression of [true, 'true', {}, { threshold: 0 }, { level: 9 }, { threshold: 10, level: 1 }, false, 'false']) {
                const srv = await server({ compression });
                await srv.start();
                const client = await Peer.open(url(srv));
                expect(client.ws.extensions).to.equal(compression === false || compression === 'false' ? '' : 'permessage-deflate');
                client.close();
                await srv.stop();
            }
        });

        it('refuses invalid settings', async () => {

            await expect(server({ compression: 'yes' })).to.reject(/compression/);
            await expect(server({ compression: { threshold: -1 } })).to.reject(/compression.threshold/);
            await expect(server({ compression: { threshold: 1.5 } })).to.reject(/compression.threshold/);
            await expect(server({ compression: { level: 0 } })).to.reject(/compression.level/);
            await expect(server({ compression: { level: 10 } })).to.reject(/compression.level/);
            await expect(server({ compression: { other: 1 } })).to.reject(/compression.other/);
        });
    });

    describe('negotiation', () => {

        it('answers with server_no_context_takeover, and keeps the window a client asks for', async () => {

            const { srv, wires } = await start();
            await peer(srv);
            await peer(srv, { perMessageDeflate: { serverMaxWindowBits: 10 } });
            await peer(srv, { perMessageDeflate: { clientMaxWindowBits: 9 } });
            await peer(srv, { perMessageDeflate: false });

            expect(wires[0]!.handshake).to.include('\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover');
            expect(wires[1]!.handshake).to.include('\r\nSec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10; server_no_context_takeover');
            expect(wires[2]!.handshake).to.include('\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=9; server_no_context_takeover');
            expect(wires[3]!.handshake).to.not.include('Sec-WebSocket-Extensions');
        });

        it('refuses an offer with a server_max_window_bits out of range, as ws does', async () => {

            const { srv } = await start();
            const ws = new WebSocket(url(srv), { perMessageDeflate: false, headers: { 'sec-websocket-extensions': 'permessage-deflate; server_max_window_bits=16' } });
            ws.on('error', () => { });
            const refused = await new Promise<number>((resolve) => ws.once('unexpected-response', (req, res) => {

                req.destroy();
                resolve(res.statusCode!);
            }));

            expect(refused).to.equal(400);
        });
    });

    describe('publish', () => {

        it('compresses a publish once, sends the same bytes to every compressing client and the plain frame to the others', async () => {

            const { srv, wires } = await start();
            const received: unknown[] = [];
            await pulseClient(srv, received);
            await nesClient(srv, received);
            const plain = await peer(srv, { perMessageDeflate: false });
            const others = await Promise.all(Array.from({ length: 20 }, () => peer(srv)));

            const message = sample(3000);
            const text = JSON.stringify({ type: 'pub', path: '/news', message });
            const zlib = require('node:zlib');                  // counted where lib/ calls it
            const deflate = zlib.deflateRawSync;
            let deflates = 0;
            zlib.deflateRawSync = (...args: any[]) => {

                ++deflates;
                return deflate(...args);
            };

            try {
                await srv.publish('/news', message);
                await until(() => received.length === 2 && plain.frames.length === 2 && others.every((other) => other.frames.length === 2));
            }
            finally {
                zlib.deflateRawSync = deflate;
            }

            expect(deflates).to.equal(1);
            expect(received).to.equal([message, message]);
            expect(JSON.parse(plain.frames[1]!).message).to.equal(message);
            for (const other of others) {
                expect(JSON.parse(other.frames[1]!).message).to.equal(message);
            }

            const ours = wires[0]!.find('"pub"');
            const nes = wires[1]!.find('"pub"');
            expect(ours.compressed).to.be.true();
            expect(ours.text).to.equal(text);
            expect(nes.payload).to.equal(ours.payload);
            for (const wire of wires.slice(3)) {
                expect(wire.find('"pub"').payload).to.equal(ours.payload);
            }

            expect(ours.wire).to.be.below(0.35 * Buffer.byteLength(text));

            const uncompressed = wires[2]!.find('"pub"');
            expect(uncompressed.compressed).to.be.false();
            expect(uncompressed.text).to.equal(text);
        });

        it('compresses once per window in use, within the window each client allows', async () => {

            const { srv, wires } = await start();
            const wide = await peer(srv);
            const narrow = await peer(srv, { perMessageDeflate: { serverMaxWindowBits: 10 } });
            const narrowToo = await peer(srv, { perMessageDeflate: { serverMaxWindowBits: 10 } });
            const nine = await peer(srv, { perMessageDeflate: { serverMaxWindowBits: 9 } });
            const tiny = await peer(srv, { perMessageDeflate: { serverMaxWindowBits: 8 } });

            // Text that repeats at distances beyond 1 KB: a window of 1 KB cannot see the repeat
            const block = Crypto.randomBytes(900).toString('base64');
            const message = { a: block, b: block };
            const text = JSON.stringify({ type: 'pub', path: '/news', message });
            await srv.publish('/news', message);
            for (const client of [wide, narrow, narrowToo, nine, tiny]) {
                await client.count(2);
                expect(JSON.parse(client.frames[1]!).message).to.equal(message);
            }

            const full = wires[0]!.find('"pub"');
            const ten = wires[1]!.find('"pub"', 10);
            expect(full.compressed).to.be.true();
            expect(full.wire).to.be.below(0.7 * text.length);                   // saw the repeat
            expect(ten.compressed).to.be.true();
            expect(ten.wire).to.be.above(full.wire);                             // could not
            expect(ten.text).to.equal(text);
            expect(wires[2]!.find('"pub"', 10).payload).to.equal(ten.payload);
            expect(wires[3]!.find('"pub"', 9).compressed).to.be.true();
            expect(wires[4]!.find('"pub"').compressed).to.be.false();           // zlib cannot make a 256-byte window
        });

        it('uses the smallest window that holds a message, shared by every client that allows it', async () => {

            const { srv, wires } = await start();
            await peer(srv);
            await peer(srv, { perMessageDeflate: { serverMaxWindowBits: 12 } });
            const message = sample(2000);
            await srv.publish('/news', message);
            await until(() => wires.every((wire) => wire.messages().length === 2));
            const full = wires[0]!.find('"pub"', 12);                             // made with 12 bits or less
            expect(wires[1]!.find('"pub"', 12).payload).to.equal(full.payload);
        });

        it('sends messages under the threshold uncompressed', async () => {

            const { srv, wires } = await start({ compression: { threshold: 500 } });
            const client = await peer(srv);
            await srv.publish('/news', { small: 'x'.repeat(400) });
            await srv.publish('/news', { large: 'x'.repeat(500) });
            await client.count(3);

            expect(wires[0]!.find('"small"').compressed).to.be.false();
            expect(wires[0]!.find('"large"').compressed).to.be.true();
        });

        it('compresses updates and replies from the threshold', async () => {

            const { srv, wires } = await start();
            const client = await peer(srv);
            expect((await client.request({ type: 'request', id: 2, method: 'GET', path: '/size/3000' })).payload).to.equal(sample(3000));
            expect((await client.request({ type: 'request', id: 3, method: 'GET', path: '/size/10' })).payload).to.equal(sample(10));
            await srv.broadcast(sample(2000, 2));
            expect((await client.next()).message).to.equal(sample(2000, 2));

            expect(wires[0]!.find('"request","id":2,').compressed).to.be.true();
            expect(wires[0]!.find('"request","id":3,').compressed).to.be.false();
            expect(wires[0]!.find('"update"').compressed).to.be.true();
            expect(wires[0]!.find('"hello"').compressed).to.be.false();
        });

        it('compresses each chunk of a chunked message, for publishes and replies', async () => {

            const { srv, wires } = await start({ payload: { maxChunkChars: 2000 } });
            const received: unknown[] = [];
            const ours = await pulseClient(srv, received);
            await nesClient(srv, received);
            const plain = await peer(srv, { perMessageDeflate: false });

            const message = sample(4500);
            await srv.publish('/news', message);
            await until(() => received.length === 2 && plain.frames.length === 4);
            expect(received).to.equal([message, message]);
            expect(plain.frames.slice(1).map((part) => part[0])).to.equal(['+', '+', '!']);

            const parts = (wire: Connection) => wire.messages().filter((part) => /^[+!]/.test(part.text));
            expect(parts(wires[0]!).map((part) => part.compressed)).to.equal([true, true, false]);    // the last part is under 1 KB
            expect(parts(wires[1]!).map((part) => part.payload)).to.equal(parts(wires[0]!).map((part) => part.payload));
            expect(parts(wires[2]!).every((part) => !part.compressed)).to.be.true();
            expect(parts(wires[0]!).map((part) => part.text).join('')).to.equal(parts(wires[2]!).map((part) => part.text).join(''));

            expect((await ours.request('/size/5000')).payload).to.equal(sample(5000));
            const reply = parts(wires[0]!).slice(3);
            expect(reply.length).to.equal(3);
            expect(reply[0]!.text.startsWith('+{"type":"request"')).to.be.true();
            expect(reply.slice(0, 2).every((part) => part.compressed)).to.be.true();
        });

        it('compresses the positioned form for recovery sockets, whole and chunked', async () => {

            const { srv, wires } = await start({ payload: { maxChunkChars: 2000 } });
            srv.subscription('/feed', { history: { size: 10, ttl: 60000 } });
            const recovering = await Peer.open(url(srv));
            defer(() => recovering.close());
            await recovering.hello({ subs: ['/feed'], pulse: { recovery: true } });
            const plain = await Peer.open(url(srv));
            defer(() => plain.close());
            await plain.hello({ subs: ['/feed'] });

            await srv.publish('/feed', sample(1500));
            await srv.publish('/feed', sample(4500, 2));
            await recovering.count(5);
            await plain.count(5);

            const positioned = wires[0]!.messages().slice(1);
            expect(positioned.map((message) => message.compressed)).to.equal([true, true, true, false]);
            expect(JSON.parse(positioned[0]!.text).position.offset).to.equal(1);
            expect(positioned.slice(1).map((part) => part.text.slice(1)).join('')).to.contain('"position":{');
            const unpositioned = wires[1]!.messages().slice(1);
            expect(unpositioned[0]!.text).to.not.contain('"position"');
            expect(unpositioned[0]!.payload).to.not.equal(positioned[0]!.payload);
            expect(JSON.parse(recovering.frames[1]!).message).to.equal(sample(1500));
        });

        it('deflates large messages off the event loop and keeps each socket\'s order', async () => {

            const { srv, wires } = await start();
            const compressing = await peer(srv);
            const plain = await peer(srv, { perMessageDeflate: false });

            // Hex text: about half of it compresses away, so even the compressed frames need a 64-bit length
            const large = (n: number) => ({ n, data: Crypto.randomBytes(80 * 1024).toString('hex') });
            const sent = [large(1), large(2), large(3), large(4), large(5), large(6), { n: 7 }, large(8)];
            for (const message of sent) {
                void srv.publish('/news', message);
            }

            await srv.eachSocket((socket) => socket.send({ n: 9 }));
            for (const client of [compressing, plain]) {
                await client.count(10, 10000);
                expect(client.frames.slice(1).map((frame) => JSON.parse(frame).message.n)).to.equal([1, 2, 3, 4, 5, 6, 7, 8, 9]);
            }

            const onWire = wires[0]!.messages().slice(1);
            expect(onWire.map((message) => message.compressed)).to.equal([true, true, true, true, true, true, false, true, false]);
            expect(onWire[0]!.wire).to.be.above(0xffff);
            expect(onWire[0]!.wire).to.be.below(0.6 * JSON.stringify(sent[0]).length);
        });

        it('closes a socket after the large message sent before the close', async () => {

            const { srv, wires } = await start();
            const client = await peer(srv);
            const message = { data: Crypto.randomBytes(40 * 1024).toString('hex') };
            await srv.eachSocket(async (socket) => {

                await socket.send(message);
                await socket.disconnect();
            });

            expect(JSON.parse(client.frames[1]!).message).to.equal(message);
            expect((await client.closedWith()).code).to.equal(1005);
            expect(wires[0]!.find('"update"').compressed).to.be.true();
        });

        it('drops what waits for a socket that is gone meanwhile', async () => {

            const { srv } = await start();
            const client = await peer(srv);
            const bystander = await peer(srv);

            void srv.publish('/news', { data: Crypto.randomBytes(1024 * 1024).toString('hex') });
            (client.ws as any)._socket.write(Buffer.from([0x8f, 0x80, 1, 2, 3, 4]));       // a reserved opcode: the server drops the socket
            await until(() => srv.pulseStats().sockets === 1, 5000);
            await srv.publish('/news', { n: 2 });
            await bystander.count(3, 10000);
            expect(JSON.parse(bystander.frames[2]!).message).to.equal({ n: 2 });
        });

        it('closes a socket that falls behind while it waits', async () => {

            const { srv } = await start({ limits: { maxBufferedBytes: 100 * 1024 } });
            const client = await peer(srv);
            for (let i = 0; i < 4; ++i) {
                void srv.publish('/news', { data: Crypto.randomBytes(40 * 1024).toString('hex') });
            }

            expect((await client.closedWith()).code).to.equal(4003);
        });
    });

    describe('clients', () => {

        it('keeps a stock nes client and our client working on a server that compresses', async () => {

            const { srv, wires } = await start();
            srv.route({ method: 'POST', path: '/echo', handler: (request) => request.payload });
            const received: unknown[] = [];
            const ours = await pulseClient(srv, received);
            const nes = await nesClient(srv, received);

            const message = sample(4000);
            expect((await ours.request({ path: '/echo', method: 'POST', payload: message })).payload).to.equal(message);
            expect((await nes.request({ path: '/echo', method: 'POST', payload: message })).payload).to.equal(message);
            await srv.publish('/news', message);
            await until(() => received.length === 2);
            expect(received).to.equal([message, message]);
            expect(wires[0]!.find('"pub"').compressed).to.be.true();
            expect(wires[1]!.find('"pub"').compressed).to.be.true();
        });
    });

    describe('incoming', () => {

        it('inflates what clients compress', async () => {

            const { srv } = await start({ onMessage: (_socket: unknown, message: { text: string }) => message.text.length });
            const client = await peer(srv);
            expect((await client.request({ type: 'message', id: 2, message: { text: 'y'.repeat(50000) } })).message).to.equal(50000);
        });

        it('closes with 1009 a message that inflates past maxPayload, and serves everyone else', async () => {

            const { srv } = await start({ limits: { maxPayload: 64 * 1024 }, onMessage: () => 'ok' });
            const bomber = await peer(srv);
            const other = await peer(srv);

            const bomb = JSON.stringify({ type: 'message', id: 2, message: 'z'.repeat(16 * 1024 * 1024) });
            expect(Zlib.deflateRawSync(bomb).length).to.be.below(64 * 1024);           // small on the wire
            bomber.send(bomb);
            expect((await bomber.closedWith()).code).to.equal(1009);
            expect((await other.request({ type: 'message', id: 2, message: 'hi' })).message).to.equal('ok');
            await wait(10);
            expect(srv.pulseStats().sockets).to.equal(1);
        });

        it('counts every fragment of a compressed message towards maxPayload', async () => {

            const { srv } = await start({ limits: { maxPayload: 64 * 1024 }, onMessage: () => 'ok' });
            const fragmenter = await peer(srv);
            const part = 'z'.repeat(40 * 1024);
            fragmenter.ws.send('{"type":"message","id":2,"message":"' + part, { fin: false });
            fragmenter.ws.send(part, { fin: false });
            fragmenter.ws.send(part + '"}', { fin: true });
            expect((await fragmenter.closedWith()).code).to.equal(1009);
        });
    });
});
