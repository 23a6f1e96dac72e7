// Hostile input: malformed frames, failed hellos, forged credentials, cross-site upgrades, tunnel abuse,
// scope escapes, connection bursts, revoked credentials, and a seeded fuzz run from several sockets at once.

import * as Boom from '@hapi/boom';
import * as Code from '@hapi/code';
import type * as Hapi from '@hapi/hapi';
import * as Iron from '@hapi/iron';
import * as Lab from '@hapi/lab';

import { Nes, Peer, server, url, until, wait } from './helpers';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { describe, it, before, after } = lab;

const password = 'a-password-that-is-at-least-32-characters-long!';
const otherPassword = 'another-password-that-is-at-least-32-characters!';

const scopes: Record<string, string[]> = {
    john: ['user-john', 'a'],
    jane: ['user-jane'],
    admin: ['admin']
};

// A test auth scheme: "Authorization: User <name>", credentials that stop verifying once revoked.
const auth = (revoked = new Set<string>()) => (srv: Hapi.Server): void => {

    srv.auth.scheme('test', () => ({
        authenticate: (request: Hapi.Request, h: Hapi.ResponseToolkit) => {

            const header = request.headers.authorization as string | undefined;
            if (!header) {
                throw Boom.unauthorized(null, 'User');
            }

            const user = header.replace(/^User /, '');
            if (!scopes[user] || revoked.has(user)) {
                throw Boom.unauthorized('Unknown user', 'User');
            }

            return h.authenticated({ credentials: { user, scope: scopes[user] } });
        },
        verify: (credentials: { credentials: { user: string } }) => {

            if (revoked.has(credentials.credentials.user)) {
                throw Boom.unauthorized('Revoked');
            }

            return Promise.resolve();
        }
    }) as any);
    srv.auth.strategy('default', 'test');
    srv.auth.default('default');
};

const as = (user: string) => ({ headers: { authorization: `User ${user}` } });

const badRequest = (message: string, type?: string, id?: unknown): Record<string, unknown> => {

    const frame: Record<string, unknown> = { statusCode: 400, payload: { error: 'Bad Request', message } };
    if (type !== undefined) {
        frame.type = type;
    }

    if (id !== undefined) {
        frame.id = id;
    }

    return frame;
};

// Replaces one character in the middle of a sealed value with another base64url character.
const tamper = (sealed: string): string => {

    const at = Math.floor(sealed.length / 2);
    return sealed.slice(0, at) + (sealed[at] === 'A' ? 'B' : 'A') + sealed.slice(at + 1);
};

// Unhandled rejections end a Node 20 process: count them across this script.
const rejections: unknown[] = [];
const onRejection = (err: unknown): void => {

    rejections.push(err);
};

describe('hostile input', () => {

    before(() => {

        process.on('unhandledRejection', onRejection);
    });

    after(() => {

        process.removeListener('unhandledRejection', onRejection);
        expect(rejections).to.equal([]);
    });

    describe('validation at the edge', () => {

        it('answers frames whose JSON is not an object, before and after hello', async () => {

            const srv = await server();
            srv.route({ method: 'GET', path: '/', handler: () => 'ok' });
            await srv.start();

            const junk = ['null', '0', '5', '"string"', '[]', '[1,2]', 'true', '{not json', '', '+{"type":', '!"}'];
            const peer = await Peer.open(url(srv));
            for (const frame of junk) {
                peer.send(frame);
            }

            await peer.count(junk.length);
            expect(peer.frames.map((frame) => JSON.parse(frame))).to.equal(junk.map(() => badRequest('Cannot parse message')));
            peer.read = junk.length;

            expect((await peer.hello()).type).to.equal('hello');
            for (const frame of junk) {
                expect(await peer.request(frame as any)).to.equal(badRequest('Cannot parse message'));
            }

            expect((await peer.request({ type: 'request', id: 2, method: 'GET', path: '/' })).payload).to.equal('ok');
            expect(peer.closed).to.be.null();
            peer.close();
            await srv.stop();
            expect(rejections).to.equal([]);
        });

        it('names the bad field and keeps the socket usable', async () => {

            const srv = await server({ onMessage: () => 'ok' });
            srv.subscription('/item/{id}');
            await srv.start();

            const peer = await Peer.open(url(srv));
            await peer.hello();
            const cases: [unknown, Record<string, unknown>][] = [
                [{ type: 'request', id: 2, method: 'GET', path: 5 }, badRequest('Message path must be a non-empty string', 'request', 2)],
                [{ type: 'request', id: 3, method: 'GET /x', path: '/' }, badRequest('Message method must be an HTTP method token', 'request', 3)],
                [{ type: 'request', id: 4, method: 'GET', path: '/', headers: { a: 1 } }, badRequest('Message headers.a must be a string header', 'request', 4)],
                [{ type: 'request', id: 5, method: 'GET', path: '/', headers: [] }, badRequest('Message headers must be an object of strings', 'request', 5)],
                [{ type: 'sub', id: 6, path: 'item/1' }, badRequest('Message path must start with /', 'sub', 6)],
                [{ type: 'sub', id: 7, path: '/item/1', position: 1 }, badRequest('Message position must be an object with a string epoch and a non-negative integer offset', 'sub', 7)],
                [{ type: 'unsub', id: 8 }, badRequest('Message path must be a non-empty string', 'unsub', 8)],
                [{ type: 'reauth', id: 9 }, badRequest('Message missing auth', 'reauth', 9)],
                [{ type: 'message', id: 1e300 }, badRequest('Message id must be an integer or a short string', 'message')],
                [{ type: 'message', id: 'x'.repeat(1000) }, badRequest('Message id must be an integer or a short string', 'message')],
                [{ type: 'message', id: { $gt: 1 } }, badRequest('Message id must be an integer or a short string', 'message')],
                [{ type: 'message' }, badRequest('Message missing id', 'message')],
                [{ type: ['message'], id: 10 }, badRequest('Cannot parse message', undefined, 10)],
                [{ type: 'constructor', id: 11 }, badRequest('Unknown message type', 'constructor', 11)],
                [{ type: '__proto__', id: 12 }, badRequest('Unknown message type', '__proto__', 12)],
                [{ type: 'hello', id: 13, version: '2' }, badRequest('Connection already initialized', 'hello', 13)]
            ];

            for (const [message, reply] of cases) {
                expect(await peer.request(message as any), JSON.stringify(message)).to.equal(reply);
            }

            expect(await peer.request({ type: 'message', id: 'last', message: 1 })).to.equal({ type: 'message', id: 'last', message: 'ok' });
            expect(peer.closed).to.be.null();
            peer.close();
            await srv.stop();
        });

        it('handles the odd cases: auth when disabled, empty version, throwing hooks, unserializable results', async () => {

            let closedSocket: any = null;
            const srv = await server({
                auth: false,
                headers: '*',
                onMessage: () => {

                    throw 'not an error';                                   // eslint-disable-line no-throw-literal
                },
                onDisconnection: (socket: any) => {

                    closedSocket = socket;
                    throw new Error('application bug');
                }
            });
            srv.route({ method: 'GET', path: '/big', handler: () => ({ n: BigInt(1) }) });
            srv.route({ method: 'GET', path: '/', handler: (_request: Hapi.Request, h: Hapi.ResponseToolkit) => h.response('ok').header('x-custom', 'y') });
            srv.subscription('/item');
            await srv.start();

            const peer = await Peer.open(url(srv));
            expect(await peer.hello({ auth: { headers: {} } })).to.equal({ ...badRequest('Authentication is not enabled'), headers: {}, type: 'hello', id: 1 });       // headers: '*'
            expect((await peer.closedWith()).code).to.equal(1008);

            const empty = await Peer.open(url(srv));
            expect((await empty.hello({ version: '' })).payload.message).to.equal('Incorrect protocol version (expected 2 but received none)');

            const other = await Peer.open(url(srv));
            await other.hello({ subs: ['/item'] });
            expect((await other.request({ type: 'request', id: 2, method: 'GET', path: '/' })).headers['x-custom']).to.equal('y');
            const failed = await other.request({ type: 'request', id: 3, method: 'GET', path: '/big' });
            expect(failed.statusCode).to.equal(500);
            expect((await other.request({ type: 'message', id: 4, message: 1 })).statusCode).to.equal(500);

            let live: any = null;
            await srv.eachSocket((socket: any) => {

                live = socket;
            });

            const circular: any = {};
            circular.self = circular;
            await expect(live.send(circular) as Promise<void>).to.reject();
            other.close();
            await until(() => closedSocket === live);
            await expect(live.send('late') as Promise<void>).to.reject('Socket not open');
            await live.revoke('/item', null, { ignoreClose: true });
            await srv.stop();
        });

        it('closes on binary frames (1003)', async () => {

            const srv = await server();
            await srv.start();
            const peer = await Peer.open(url(srv));
            await peer.hello();
            peer.ws.send(Buffer.from(JSON.stringify({ type: 'ping', id: 2 })), { binary: true });
            expect(await peer.closedWith()).to.equal({ code: 1003, reason: 'Binary frames are not supported' });
            await srv.stop();
        });

        it('closes on invalid UTF-8 (1007)', async () => {

            const srv = await server();
            await srv.start();
            const peer = await Peer.open(url(srv));
            (peer.ws as any)._socket.write(Buffer.from([0x81, 0x82, 0, 0, 0, 0, 0xc3, 0x28]));         // masked text frame, bad UTF-8
            expect((await peer.closedWith()).code).to.equal(1007);
            await srv.stop();
        });
    });

    describe('failed hello', () => {

        it('delivers the error, closes the socket and serves nothing after it', async () => {

            const srv = await server({ auth: { type: 'direct' } }, 'pulse', auth());
            srv.route({ method: 'GET', path: '/', options: { auth: false, handler: () => 'served' } });
            srv.subscription('/item/{id}', { auth: false });
            await srv.start();

            const hellos: [Record<string, unknown>, string][] = [
                [{ version: '1', auth: as('john') }, 'Incorrect protocol version (expected 2 but received 1)'],
                [{ version: 2, auth: as('john') }, 'Incorrect protocol version (expected 2 but received 2)'],
                [{ version: '2', auth: as('mallory') }, 'Unknown user'],
                [{ version: '2' }, 'Connection requires authentication'],
                [{ version: '2', auth: 'token' }, 'Direct authentication must be an object with headers'],
                [{ version: '2', auth: { headers: { authorization: 5 } } }, 'Direct authentication headers must be an object of strings'],
                [{ version: '2', auth: as('john'), subs: ['/nothing'] }, 'Subscription not found'],
                [{ version: '2', auth: as('john'), subs: [7] }, 'Message subs must be a non-empty string']
            ];

            for (const [hello, message] of hellos) {
                const peer = await Peer.open(url(srv));
                peer.send({ type: 'hello', id: 1, ...hello });
                peer.send({ type: 'request', id: 2, method: 'GET', path: '/' });                // pipelined behind the hello
                let reply = await peer.next();
                while (reply.type === 'request') {
                    expect(reply.statusCode).to.equal(400);                                     // 'Connection is not initialized'
                    reply = await peer.next();
                }

                expect(reply.type, message).to.equal('hello');
                expect(reply.payload.message).to.equal(message);
                expect((await peer.closedWith()).code).to.equal(1008);
                expect(peer.frames.some((frame) => frame.includes('served')), message).to.be.false();
            }

            await until(() => srv.pulseStats().sockets === 0);
            await srv.stop();
        });
    });

    describe('credentials', () => {

        it('refuses tampered, truncated, expired and foreign tokens with 401', async () => {

            const ttl = 1000;                                                               // room to use the token on a loaded machine
            const srv = await server({ auth: { type: 'token', password, ttl } }, 'pulse', auth());
            srv.route({ method: 'GET', path: '/me', handler: (request) => request.auth.credentials.user });
            await srv.start();

            const res = await srv.inject({ url: '/nes/auth', headers: { authorization: 'User john' } });
            const issued = Date.now();                                                      // the token expires by issued + ttl
            const token = (res.result as { token: string }).token;
            const foreign = await Iron.seal({ credentials: { user: 'john', scope: ['user-john'] } }, otherPassword, Iron.defaults);
            const unsealedWrong = await Iron.seal('just a string', password, Iron.defaults);

            const good = await Peer.open(url(srv));
            await good.hello({ auth: token });
            expect((await good.request({ type: 'request', id: 2, method: 'GET', path: '/me' })).payload).to.equal('john');

            const attempt = async (value: unknown): Promise<any> => {

                const peer = await Peer.open(url(srv));
                const reply = await peer.hello({ auth: value });
                expect((await peer.closedWith()).code).to.equal(1008);
                return reply;
            };

            for (const value of [tamper(token), token.slice(0, -8), token.slice(0, 20), foreign, 'Fe26.2**', 12, { token }, ['x']]) {
                const reply = await attempt(value);
                expect(reply.statusCode, String(value)).to.equal(401);
                expect(reply.payload.message).to.equal('Invalid token');
            }

            expect((await attempt(unsealedWrong)).statusCode).to.equal(401);               // sealed by us, but not credentials

            await wait(issued + ttl + 50 - Date.now());                                     // past the ttl (iron alone allows 60 s of skew)
            expect((await attempt(token)).payload.message).to.equal('Invalid token');

            good.close();
            await srv.stop();
        });

        it('refuses tampered, truncated, expired and foreign cookies with 401', async () => {

            const ttl = 1000;
            const srv = await server({ auth: { type: 'cookie', password, isSecure: false, ttl } }, 'pulse', auth());
            await srv.start();

            const res = await srv.inject({ url: '/nes/auth', headers: { authorization: 'User jane' } });
            const sealedBy = Date.now();
            const cookie = (res.headers['set-cookie'] as string[])[0]!.split(';')[0]!;
            const value = cookie.slice('nes='.length);
            const foreign = 'nes=' + await Iron.seal({ credentials: { user: 'jane' } }, otherPassword, Iron.defaults);

            const attempt = async (header: string): Promise<any> => {

                const peer = await Peer.open(url(srv), { headers: { cookie: header } });
                const reply = await peer.hello();
                if (reply.statusCode) {
                    expect((await peer.closedWith()).code).to.equal(1008);
                }

                peer.close();
                return reply;
            };

            expect((await attempt(cookie)).type).to.equal('hello');
            for (const header of ['nes=' + tamper(value), cookie.slice(0, -6), 'nes=' + value.slice(0, 30), foreign, 'nes=garbage', 'nes="unterminated']) {
                const reply = await attempt(header);
                expect(reply.statusCode, header).to.equal(401);
                expect(reply.payload.message).to.equal('Invalid nes authentication cookie');
            }

            await until(() => Date.now() > sealedBy + ttl + 50, 3000, 'past the ttl');
            const expired = await attempt(cookie);
            expect(expired.statusCode).to.equal(401);
            expect(expired.payload.message).to.equal('Invalid nes authentication cookie');
            await srv.stop();
        });

        it('refuses a cross-site upgrade when origin is set (cookie auth)', async () => {

            const srv = await server({ auth: { type: 'cookie', password, isSecure: false }, origin: ['https://app.example'] }, 'pulse', auth());
            await srv.start();
            const res = await srv.inject({ url: '/nes/auth', headers: { authorization: 'User jane' } });
            const cookie = (res.headers['set-cookie'] as string[])[0]!.split(';')[0]!;

            await expect(Peer.open(url(srv), { headers: { cookie }, origin: 'https://evil.example' })).to.reject('Upgrade refused: 403');
            await expect(Peer.open(url(srv), { headers: { cookie }, origin: 'https://app.example.evil.example' })).to.reject('Upgrade refused: 403');
            await expect(Peer.open(url(srv), { headers: { cookie }, origin: 'null' })).to.reject('Upgrade refused: 403');
            await expect(Peer.open(url(srv), { headers: { cookie } })).to.reject('Upgrade refused: 403');
            expect(srv.pulseStats().sockets).to.equal(0);

            const peer = await Peer.open(url(srv), { headers: { cookie }, origin: 'https://app.example' });
            expect((await peer.hello()).type).to.equal('hello');
            peer.close();
            await srv.stop();
        });
    });

    describe('tunnelled requests', () => {

        for (const type of ['direct', 'token', 'cookie'] as const) {
            it(`cannot carry Authorization nor reach the auth endpoint (${type})`, async () => {

                const srv = await server({ auth: { type, password, isSecure: false, route: { mode: 'optional' } } }, 'pulse', auth());
                srv.route([
                    { method: 'GET', path: '/me', options: { auth: { mode: 'optional' }, handler: (request) => request.auth.credentials?.user ?? 'anonymous' } },
                    { method: 'GET', path: '/x/{p*}', options: { auth: false, handler: () => 'x' } },
                    { method: 'GET', path: '/admin', options: { auth: { scope: 'admin' }, handler: () => 'secret' } },
                    { method: 'GET', path: '/private', options: { auth: { mode: 'required' }, handler: () => 'private' } },
                    { method: 'GET', path: '/public', options: { auth: false, handler: () => 'public' } }
                ]);
                await srv.start();

                let hello: Record<string, unknown> = { auth: as('john') };
                if (type === 'token') {
                    const res = await srv.inject({ url: '/nes/auth', headers: { authorization: 'User john' } });
                    hello = { auth: (res.result as { token: string }).token };
                }

                let options = {};
                if (type === 'cookie') {
                    const res = await srv.inject({ url: '/nes/auth', headers: { authorization: 'User john' } });
                    options = { headers: { cookie: (res.headers['set-cookie'] as string[])[0]!.split(';')[0]! } };
                    hello = {};
                }

                const peer = await Peer.open(url(srv), options);
                expect((await peer.hello(hello)).type).to.equal('hello');
                let id = 1;
                const request = (method: string, path: string, headers?: Record<string, string>) => peer.request({ type: 'request', id: ++id, method, path, headers });

                expect((await request('GET', '/me')).payload).to.equal('john');
                for (const name of ['authorization', 'Authorization', 'AUTHORIZATION']) {
                    expect(await request('GET', '/me', { [name]: 'User admin' })).to.equal(badRequest('Cannot include an Authorization header', 'request', id));
                }

                expect((await request('GET', '/me', { 'authorization ': 'User admin' })).statusCode).to.equal(400);

                const spellings = ['/nes/auth', '/nes/auth?x=1', '/nes/auth#x', '/nes/./auth', '/x/../nes/auth', '/nes/%61uth', '/nes/auth/', '//nes/auth', 'nes.auth', '/NES/AUTH'];
                for (const path of spellings) {
                    for (const method of ['GET', 'POST', 'auth', 'AUTH']) {
                        const reply = await request(method, path);
                        expect(reply.statusCode >= 400 && reply.statusCode < 500, `${method} ${path}: ${reply.statusCode}`).to.be.true();
                        expect(JSON.stringify(reply), `${method} ${path}`).to.not.include('token');
                        expect(JSON.stringify(reply), `${method} ${path}`).to.not.include('authenticated');
                    }
                }

                // A route's own auth still applies: scope, and required auth for anonymous sockets.
                expect((await request('GET', '/admin')).statusCode).to.equal(403);
                expect((await request('GET', '/private')).payload).to.equal('private');

                const anonymous = await Peer.open(url(srv));
                expect((await anonymous.hello()).type).to.equal('hello');
                expect((await anonymous.request({ type: 'request', id: 2, method: 'GET', path: '/private' })).statusCode).to.equal(401);
                expect((await anonymous.request({ type: 'request', id: 3, method: 'GET', path: '/admin' })).statusCode).to.equal(401);
                expect((await anonymous.request({ type: 'request', id: 4, method: 'GET', path: '/me' })).payload).to.equal('anonymous');
                expect((await anonymous.request({ type: 'request', id: 5, method: 'GET', path: '/public' })).payload).to.equal('public');

                peer.close();
                anonymous.close();
                await srv.stop();
            });
        }

        it('answers requests the tunnel cannot build with 400', async () => {

            const srv = await server();
            srv.route({ method: 'POST', path: '/echo', handler: (request) => request.payload });
            await srv.start();

            const peer = await Peer.open(url(srv));
            await peer.hello();
            const deep = '['.repeat(20000) + ']'.repeat(20000);
            peer.send(`{"type":"request","id":2,"method":"POST","path":"/echo","payload":${deep}}`);
            expect(await peer.next()).to.equal(badRequest('Invalid request', 'request', 2));
            expect((await peer.request({ type: 'request', id: 4, method: 'POST', path: '/echo', headers: { 'content-encoding': 'gzip', 'content-type': 'application/json' }, payload: 'x' })).statusCode).to.equal(400);
            expect((await peer.request({ type: 'request', id: 5, method: 'POST', path: '/echo', payload: { a: 1 } })).payload).to.equal({ a: 1 });
            peer.close();
            await srv.stop();
        });
    });

    describe('subscription scope', () => {

        it('cannot be escaped through the path parameter', async () => {

            const subscribed: { path: string; id: string }[] = [];
            const srv = await server({ auth: { type: 'direct' } }, 'pulse', auth());
            srv.subscription('/user/{id}', {
                auth: { scope: ['user-{params.id}'] },
                onSubscribe: (_socket, path, params) => {

                    subscribed.push({ path, id: params.id! });
                }
            });
            srv.subscription('/room/{id}/{rest*}', { auth: { scope: ['user-{params.id}'] } });
            await srv.start();

            const john = await Peer.open(url(srv));
            await john.hello({ auth: as('john') });
            const got: string[] = [];
            john.ws.on('message', (data) => {

                const frame = JSON.parse(data.toString());
                if (frame.type === 'pub') {
                    got.push(frame.path);
                }
            });

            const attempts = [
                '/user/jane', '/user/JOHN', '/user/John', '/user/jane/', '/user/john/', '/user//jane', '/user/john/../jane',
                '/user/..%2Fjane', '/user/john%2F..%2Fjane', '/user/john%2f..%2fjane', '/user/%2e%2e/jane', '/user/%6Aane', '/user/j%61ne',
                '/user/jane%00', '/user/jane%20', '/user/ jane', '/user/jane?x', '/user/jane#john', '/user/john#', '/user/%', '/user/%E0%A4%A',
                '/user/{id}', '/user/%7Bparams.id%7D', '/user/user-john', '/user/john,jane', '/user/john%2Cjane', '/USER/jane', '/user/jane;john',
                '/room/jane/x', '/room/jane/../john', '/room/john%2F..%2Fjane/x'
            ];

            let id = 1;
            for (const path of attempts) {
                const reply = await john.request({ type: 'sub', id: ++id, path });
                if (reply.type === 'sub' && !reply.statusCode) {
                    const decoded = decodeURIComponent(path.split('/')[2]!);
                    expect(decoded, path).to.equal('john');
                }
                else {
                    expect([400, 403, 404], path).to.include(reply.statusCode);
                }
            }

            for (const entry of subscribed) {
                expect(entry.id, entry.path).to.equal('john');
            }

            for (const path of ['/user/jane', '/room/jane/x']) {
                await srv.publish(path, 'for jane only');
            }

            expect((await john.request({ type: 'sub', id: ++id, path: '/user/john' })).type).to.equal('sub');
            await srv.publish('/user/john', 'for john');
            await until(() => got.includes('/user/john'));
            expect(got).to.equal(['/user/john']);
            john.close();
            await srv.stop();
        });
    });

    describe('connection limits', () => {

        it('maxConnections holds under a burst of parallel connects', async () => {

            const srv = await server({ maxConnections: 5 });
            await srv.start();

            const results = await Promise.allSettled(Array.from({ length: 40 }, () => Peer.open(url(srv))));
            const open = results.filter((result) => result.status === 'fulfilled').map((result) => (result as PromiseFulfilledResult<Peer>).value);
            const refused = results.filter((result) => result.status === 'rejected').map((result) => (result as PromiseRejectedResult).reason.message);
            expect(open).to.have.length(5);
            expect(refused).to.equal(Array(35).fill('Upgrade refused: 503'));
            expect(srv.pulseStats().sockets).to.equal(5);

            open.pop()!.close();
            await until(() => srv.pulseStats().sockets === 4);
            const again = await Peer.open(url(srv));
            expect((await again.hello()).type).to.equal('hello');

            for (const peer of [...open, again]) {
                peer.close();
            }

            await until(() => srv.pulseStats().sockets === 0);
            await srv.stop();
        });

        it('maxConnectionsPerUser holds under a burst of parallel hellos', async () => {

            const srv = await server({ auth: { type: 'token', password, index: true, maxConnectionsPerUser: 3 } }, 'pulse', auth());
            await srv.start();
            const res = await srv.inject({ url: '/nes/auth', headers: { authorization: 'User john' } });
            const token = (res.result as { token: string }).token;

            const peers = await Promise.all(Array.from({ length: 30 }, () => Peer.open(url(srv))));
            const replies = await Promise.all(peers.map((peer) => peer.hello({ auth: token })));
            const accepted = replies.filter((reply) => reply.type === 'hello' && !reply.statusCode);
            expect(accepted).to.have.length(3);
            for (const reply of replies.filter((item) => item.statusCode)) {
                expect(reply.statusCode).to.equal(503);
                expect(reply.payload.message).to.equal('Too many connections for the authenticated user');
            }

            await until(() => srv.pulseStats().sockets === 3);
            expect(srv.pulseStats().users).to.equal(1);

            for (const peer of peers) {
                peer.close();
            }

            await until(() => srv.pulseStats().sockets === 0 && srv.pulseStats().users === 0);
            await srv.stop();
        });
    });

    describe('credentials that stop verifying', () => {

        it('disconnect an idle socket within the verify interval (4002)', { timeout: 30000 }, async () => {

            // An interval long enough that a late timer on a loaded machine fits in the slack below
            const revoked = new Set<string>();
            const interval = 1500;
            const srv = await server({ auth: { type: 'direct', minAuthVerifyInterval: interval }, heartbeat: false }, 'pulse', auth(revoked));
            srv.route({ method: 'GET', path: '/', handler: () => 'ok' });
            await srv.start();

            const john = await Peer.open(url(srv));
            await john.hello({ auth: as('john') });
            const jane = await Peer.open(url(srv));
            await jane.hello({ auth: as('jane') });

            await wait(interval / 2);                                  // revoke mid-interval: the worst case for a sweep
            revoked.add('john');
            const revokedAt = Date.now();
            expect(await john.closedWith(5 * interval)).to.equal({ code: 4002, reason: 'Credential verification failed' });
            expect(Date.now() - revokedAt).to.be.below(interval * 1.4);  // within one interval (+ slack); a sweep skipping fresh sockets takes 1.5x

            expect((await jane.request({ type: 'request', id: 2, method: 'GET', path: '/' })).payload).to.equal('ok');

            revoked.add('jane');
            expect((await jane.closedWith(5 * interval)).code).to.equal(4002);
            await srv.stop();
        });
    });

    describe('fuzz', () => {

        it('survives thousands of random and mutated frames from several sockets', { timeout: 60000 }, async () => {

            const seed = process.env.FUZZ_SEED ? Number(process.env.FUZZ_SEED) : Date.now() % 2 ** 31;
            try {
                await fuzz(seed);
            }
            catch (err) {
                console.error(`\nFuzz failed; reproduce with FUZZ_SEED=${seed}`);
                throw err;
            }
        });
    });
});

// ---- Fuzz ----

const prng = (seed: number): (() => number) => {

    let state = seed | 0;
    return () => {                                                       // mulberry32

        state = (state + 0x6D2B79F5) | 0;
        let t = Math.imul(state ^ (state >>> 15), 1 | state);
        t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
        return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
};

const fuzz = async (seed: number): Promise<void> => {

    const sockets = 6;
    const framesPerSocket = 2500;
    const maxPayload = 64 * 1024;

    const srv = await server({
        auth: { type: 'direct', route: { mode: 'optional' }, index: true, timeout: 2000 },
        limits: { maxPayload, maxInFlight: 16, maxSubscriptions: 20 },
        payload: { maxChunkChars: 4096 },
        onMessage: (_socket: unknown, message: unknown) => message
    }, 'pulse', auth());

    srv.route([
        { method: 'GET', path: '/', options: { auth: false, handler: () => 'hello' } },
        { method: 'POST', path: '/echo', options: { id: 'echo', handler: (request) => request.payload } },
        { method: 'GET', path: '/me', handler: (request) => request.auth.credentials?.user ?? null }
    ]);
    srv.subscription('/item/{id}', { filter: (_path, message) => Promise.resolve(!message?.hidden) });
    srv.subscription('/user/{id}', { auth: { scope: ['user-{params.id}'], index: true } });
    await srv.start();

    global.gc?.();
    const heapBefore = process.memoryUsage().heapUsed;

    const rejectionsBefore = rejections.length;
    let sent = 0;
    let reopened = 0;

    const run = async (index: number): Promise<void> => {

        const random = prng(seed + index * 7919);
        const int = (max: number): number => Math.floor(random() * max);
        const pick = <T>(items: readonly T[]): T => items[int(items.length)]!;

        const strings = ['', '/', '/item/1', '/item/' + 'x'.repeat(300), '/user/john', '/user/jane', '/user/..%2Fjane', '/nes/auth', 'echo', 'nes.auth', '/%', '/\u0000', '\ud800', 'x'.repeat(5000), 'GET', 'auth', '2', '__proto__', 'constructor'];
        const value = (depth = 0): unknown => {

            switch (int(depth > 3 ? 5 : 8)) {
                case 0: return null;
                case 1: return random() < 0.5;
                case 2: return pick([0, -1, 1, 2 ** 53, -(2 ** 60), 1.5, 1e308, Number.MAX_SAFE_INTEGER]);
                case 3: return pick(strings);
                case 4: return String.fromCharCode(...Array.from({ length: int(20) }, () => int(0xd7ff)));
                case 5: return Array.from({ length: int(4) }, () => value(depth + 1));
                case 6: return Object.fromEntries(Array.from({ length: int(4) }, () => [pick(['type', 'id', 'path', 'headers', 'payload', 'a', '__proto__', 'auth']), value(depth + 1)]));
                default: return { headers: { authorization: 'User ' + pick(['john', 'jane', 'admin', 'x']) } };
            }
        };

        const template = (): Record<string, unknown> => {

            const id = int(1000) + 1;
            switch (int(8)) {
                case 0: return { type: 'hello', id, version: '2', auth: random() < 0.5 ? { headers: { authorization: 'User ' + pick(['john', 'jane', 'nobody']) } } : undefined, subs: random() < 0.3 ? ['/item/1'] : undefined };
                case 1: return { type: 'request', id, method: pick(['GET', 'POST', 'auth', 'DELETE']), path: pick(['/', '/echo', 'echo', '/me', '/nes/auth', '/missing']), payload: value() };
                case 2: return { type: 'message', id, message: value() };
                case 3: return { type: 'sub', id, path: pick(['/item/1', '/item/2', '/user/john', '/user/jane', '/nope']) };
                case 4: return { type: 'unsub', id, path: pick(['/item/1', '/user/john']) };
                case 5: return { type: 'reauth', id, auth: { headers: { authorization: 'User ' + pick(['john', 'jane', 'nobody']) } } };
                case 6: return { type: 'ping', id };
                default: return { type: 'request', id, method: 'GET', path: '/', headers: { 'x-a': 'b', 'content-length': pick(['0', '99999', '-1']) } };
            }
        };

        const frame = (): string | Buffer => {

            const kind = random();
            if (kind < 0.35) {
                return JSON.stringify(template());
            }

            if (kind < 0.7) {                                              // mutate one field
                const message = template();
                const keys = Object.keys(message);
                const key = random() < 0.8 ? pick(keys) : pick(['type', 'id', 'version', 'headers', 'payload', 'subs', 'pulse', 'position', 'method', 'path']);
                if (random() < 0.2) {
                    delete message[key];
                }
                else {
                    message[key] = value();
                }

                return JSON.stringify(message);
            }

            if (kind < 0.8) {                                              // broken JSON
                const text = JSON.stringify(template());
                return pick([text.slice(0, int(text.length)), text + '}', '+' + text, '!' + text, '+' + text.slice(0, 5), text.replace(/"/g, "'"), String(value())]);
            }

            if (kind < 0.88) {                                             // deep nesting
                const depth = 100 + int(20000);
                const open = pick(['[', '{"a":']);
                const close = open === '[' ? ']' : '}';
                const inner = open.repeat(depth) + '1' + close.repeat(depth);
                return pick([inner, `{"type":"message","id":1,"message":${inner}}`, `{"type":"request","id":2,"method":"POST","path":"/echo","payload":${inner}}`, `{"type":"hello","id":3,"version":"2","auth":${inner}}`]);
            }

            if (kind < 0.95) {                                             // raw junk, valid UTF-8
                return Array.from({ length: int(200) }, () => String.fromCharCode(32 + int(95))).join('');
            }

            if (kind < 0.975) {                                            // huge ids and long strings
                return JSON.stringify({ type: pick(['ping', 'message', 'sub']), id: pick([1e400, 'x'.repeat(int(2000)), -0, 2 ** 64]), path: '/' + 'y'.repeat(int(4000)) });
            }

            if (kind < 0.99) {                                             // over maxPayload: 1009
                return 'z'.repeat(maxPayload + 1 + int(1000));
            }

            return Buffer.from([int(256), int(256), int(256)]);              // binary: 1003
        };

        let peer = await Peer.open(url(srv));
        for (let i = 0; i < framesPerSocket; ++i) {
            if (peer.closed || peer.ws.readyState !== peer.ws.OPEN) {
                peer.ws.terminate();
                peer = await Peer.open(url(srv));
                ++reopened;
            }

            const next = frame();
            if (Buffer.isBuffer(next)) {
                peer.ws.send(next, { binary: true });
            }
            else {
                peer.send(next);
            }

            ++sent;
            if (i % 25 === 0) {
                await wait(1);                                              // let replies flow
            }

            peer.frames.length = 0;                                         // keep the client's memory flat
        }

        peer.ws.terminate();
    };

    await Promise.all(Array.from({ length: sockets }, (_, index) => run(index)));
    expect(sent).to.equal(sockets * framesPerSocket);
    await until(() => srv.pulseStats().sockets === 0, 10000, 'fuzzed sockets to close');
    expect(srv.pulseStats()).to.equal({ sockets: 0, users: 0, topics: 0, subscriptions: 0, pendingUpgrades: 0 });

    // A well-behaved client is still served in full.
    const client = new Nes.Client(url(srv));
    await client.connect({ auth: { headers: { authorization: 'User john' } } });
    expect((await client.request('/me')).payload).to.equal('john');
    expect((await client.request({ method: 'POST', path: '/echo', payload: { a: 1 } })).payload).to.equal({ a: 1 });
    const got: unknown[] = [];
    await client.subscribe('/user/john', (message: unknown) => got.push(message));
    await srv.publish('/user/john', 'still here');
    await until(() => got.length === 1);
    await client.disconnect();
    await srv.stop();

    global.gc?.();
    await wait(50);
    global.gc?.();
    const grown = process.memoryUsage().heapUsed - heapBefore;
    expect(grown, `heap grew by ${grown} bytes (seed ${seed}, ${reopened} reconnects)`).to.be.below(global.gc ? 16 * 1024 * 1024 : 64 * 1024 * 1024);
    expect(rejections.slice(rejectionsBefore), `seed ${seed}`).to.equal([]);
};
