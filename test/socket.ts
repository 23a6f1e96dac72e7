// The socket API handed to the application (as @hapi/nes): app state, disconnect, revoke, hello timeout.

import * as Code from '@hapi/code';
import * as Lab from '@hapi/lab';

import type { Socket } from '../lib';
import { CloseCode } from '../lib';
import { libraryTimers, Peer, server, url, until, wait } from './helpers';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { describe, it } = lab;

describe('socket', () => {

    it('keeps application state on socket.app', async () => {

        const srv = await server({
            onConnection: (socket: Socket) => {

                socket.app.greeting = 'hi';
            }
        });
        srv.route({ method: 'GET', path: '/app', handler: (request) => request.socket!.app });
        await srv.start();

        const peer = await Peer.open(url(srv));
        await peer.hello();
        expect((await peer.request({ type: 'request', id: 2, method: 'GET', path: '/app' })).payload).to.equal({ greeting: 'hi' });
        peer.close();
        await srv.stop();
    });

    it('resolves disconnect() however often it is called, before and after the close', async () => {

        let socket!: Socket;
        const srv = await server({
            onConnection: (connected: Socket) => {

                socket = connected;
            }
        });
        await srv.start();

        const peer = await Peer.open(url(srv));
        await peer.hello();
        await Promise.all([socket.disconnect(), socket.disconnect()]);
        expect(peer.closed).to.not.be.null();
        expect(srv.pulseStats().sockets).to.equal(0);
        await socket.disconnect();                                      // already gone
        expect(socket.isOpen()).to.be.false();
        await srv.stop();
    });

    it('revokes a closed socket silently only with ignoreClose', async () => {

        let socket!: Socket;
        const unsubscribed: string[] = [];
        const srv = await server({
            onConnection: (connected: Socket) => {

                socket = connected;
            }
        });
        srv.subscription('/news', {
            onUnsubscribe: (_socket, path) => {

                unsubscribed.push(path);
            }
        });
        await srv.start();

        const peer = await Peer.open(url(srv));
        await peer.hello({ subs: ['/news'] });
        await socket.revoke('/news', 'bye', { ignoreClose: true });                // open: sent as usual
        expect(await peer.next()).to.equal({ type: 'revoke', path: '/news', message: 'bye' });
        expect(unsubscribed).to.equal(['/news']);
        await peer.request({ type: 'sub', id: 2, path: '/news' });
        peer.close();
        await until(() => srv.pulseStats().sockets === 0);
        expect(unsubscribed).to.equal(['/news', '/news']);

        await socket.revoke('/news', 'bye', { ignoreClose: true });
        await expect(socket.revoke('/news', 'bye')).to.reject('Socket not open');
        expect(unsubscribed).to.equal(['/news', '/news']);
        await srv.stop();
    });

    it('waits for hello as long as it takes when auth.timeout is false', async () => {

        const srv = await server({ auth: { type: 'direct', timeout: false, route: false } });
        await srv.start();

        const peer = await Peer.open(url(srv));
        await wait(200);
        expect(peer.closed).to.be.null();
        expect((await peer.hello()).type).to.equal('hello');
        peer.close();
        await srv.stop();
    });

    it('waits again when the expiry timer fires before the expiry (clock moved back)', async () => {

        const srv = await server({ auth: { type: 'direct', route: 'json' } }, 'pulse', (hapi) => {

            hapi.auth.scheme('json', () => ({
                authenticate: (request: any, h: any) => h.authenticated({ credentials: JSON.parse(request.headers.authorization) })
            }));
            hapi.auth.strategy('json', 'json');
        });
        await srv.start();

        const peer = await Peer.open(url(srv));
        const expiresAt = Date.now() + 100;
        await peer.hello({ auth: { headers: { authorization: JSON.stringify({ user: 'john', expiresAt }) } } });

        const now = Date.now;
        Date.now = () => now() - 400;
        try {
            await wait(250);                                            // the timer fired at 100 ms, but the clock says 400 ms earlier
            expect(peer.closed).to.be.null();
        }
        finally {
            Date.now = now;
        }

        expect((await peer.closedWith(3000)).code).to.equal(CloseCode.authExpired);
        expect(Date.now()).to.be.at.least(expiresAt);
        await srv.stop();
    });

    it('times out a silent connection with the hello timeout', async () => {

        const srv = await server({ auth: { type: 'direct', timeout: 50, route: false } });
        await srv.start();

        const peer = await Peer.open(url(srv));
        expect((await peer.closedWith()).code).to.equal(CloseCode.helloTimeout);
        await srv.stop();
    });
});

describe('socket send path', () => {

    it('writes nothing after the close frame of a socket the server is closing', async () => {

        const srv = await server();
        srv.subscription('/news');
        await srv.start();

        const peer = await Peer.open(url(srv));
        await peer.hello({ subs: ['/news'] });

        const opcodes = peer.opcodes();

        await srv.eachSocket((socket) => {

            socket.disconnect();                                // close frame written; socket still listed until the peer answers
        });

        await srv.publish('/news', 'after close');
        await srv.broadcast('after close');
        await peer.closedWith();
        expect(opcodes).to.equal([8]);                          // the close frame, and nothing after it
        await srv.stop();
    });
});

describe('gathered frames', () => {

    it('drops frames gathered in the tick the peer closed in, rather than writing them after the close frame', async () => {

        let srv!: Awaited<ReturnType<typeof server>>;
        srv = await server({
            onMessage: () => {

                srv.publish('/news', 'gathered');                       // gathered for the next tick
                return 'ok';
            }
        });
        srv.subscription('/news');
        await srv.start();

        const peer = await Peer.open(url(srv));
        await peer.hello({ subs: ['/news'] });
        const opcodes = peer.opcodes();
        const raw = (peer.ws as unknown as { _socket: { cork(): void; uncork(): void } })._socket;

        raw.cork();                                                     // the message and the close frame in one packet
        peer.send({ type: 'message', id: 2, message: 'publish please' });
        peer.ws.close();
        raw.uncork();
        await peer.closedWith();
        expect(opcodes).to.equal([8]);
        await srv.stop();
    });
});

describe('review fixes', () => {

    it('logs an async onDisconnection that rejects instead of leaving the rejection unhandled', async () => {

        const srv = await server({ onDisconnection: () => Promise.reject(new Error('handler failed')) });
        const logged: unknown[] = [];
        srv.events.on('log', (event) => {

            if (event.tags.includes('onDisconnection')) {
                logged.push(event.error ?? event.data);
            }
        });
        await srv.start();

        const peer = await Peer.open(url(srv));
        await peer.hello();
        peer.close();
        await until(() => logged.length === 1);
        expect((logged[0] as Error).message).to.equal('handler failed');
        await srv.stop();
    });

    it('sends broadcasts only to sockets that completed hello', async () => {

        const srv = await server();
        await srv.start();

        const early = await Peer.open(url(srv));
        await srv.broadcast('too early');
        const ready = await Peer.open(url(srv));
        await ready.hello();
        await srv.broadcast('for ready sockets');
        await until(() => ready.frames.length === 2);
        expect(early.frames).to.equal([]);
        expect(JSON.parse(ready.frames[1]!)).to.equal({ type: 'update', message: 'for ready sockets' });

        early.close();
        ready.close();
        await srv.stop();
    });

    it('keeps no expiry timer for a socket that left while its hello was authenticating', async () => {

        let authenticating!: () => void;
        const started = new Promise<void>((resolve) => {

            authenticating = resolve;
        });

        let release!: () => void;
        const gate = new Promise<void>((resolve) => {

            release = resolve;
        });

        let authenticated = false;
        const srv = await server({ auth: { type: 'direct' }, heartbeat: false }, 'pulse', (hapi) => {

            hapi.auth.scheme('slow', () => ({
                authenticate: async (_request, h) => {

                    authenticating();
                    await gate;
                    authenticated = true;
                    return h.authenticated({ credentials: { user: 'late', expiresAt: Date.now() + 3600 * 1000 } });
                }
            }));
            hapi.auth.strategy('slow', 'slow');
            hapi.auth.default('slow');
        });
        await srv.start();
        const timers = libraryTimers();
        try {
            const peer = await Peer.open(url(srv));
            peer.send({ type: 'hello', id: 1, version: '2', auth: { headers: {} } });
            await started;
            peer.ws.terminate();
            await until(() => srv.pulseStats().sockets === 0);
            release();                                                  // authentication finishes after the socket left
            await until(() => authenticated);
            await wait(50);                                             // the hello resumes after the strategy returned
            await until(() => timers.pending() === 0, 3000, 'no timer left by the library');
        }
        finally {
            timers.stop();
        }

        await srv.stop();
    });
});
