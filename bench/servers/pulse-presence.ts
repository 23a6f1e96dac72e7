// hapi-pulse for the presence scenarios (ServerOptions.presence): sockets authenticate in their hello (direct auth,
// mode optional, the user is `auth.headers['x-user']`; no header: anonymous) and '/room/{id}' is declared with
// presence (info { alias: user }, batch interval `interval` ms) or, with `on: false`, without it: the same server
// otherwise, so the two differ only by presence.

import * as Boom from '@hapi/boom';
import type { Request, ResponseToolkit, Server } from '@hapi/hapi';

import type { HapiExtras } from './hapi-common';
import type { PresenceServerOptions } from './types';

interface PresenceStoreView {
    apply(entries: Array<{ path: string; user: string; sockets: number; info: string }>): Promise<void>;
}

interface PresenceQueries {
    count(path: string): Promise<{ users: number; sockets: number; anonymous: number }>;
}

// Extra plugin options (the auth) and the hapi extras of the target. `broker` is the one given to the plugin: its
// presence store takes the members that presenceFill writes as this node's.
export function presenceSetup(presence: PresenceServerOptions, broker: unknown): { options: object; extras: HapiExtras } {

    const strategy = 'bench-user';
    return {
        options: { auth: { type: 'direct', route: { strategy, mode: 'optional' } } },
        extras: {
            subscriptions: [['/room/{id}', presence.on ? { presence: { info: (credentials: { user: string }) => ({ alias: credentials.user }), interval: presence.interval } } : {}]],
            catchPublish: true,
            prepare: (server: Server) => {

                server.auth.scheme(strategy, () => ({
                    authenticate: (request: Request, h: ResponseToolkit) => {

                        const user = request.headers['x-user'];
                        if (typeof user !== 'string' || !user) {
                            throw Boom.unauthorized(null, strategy);           // no user: anonymous (mode optional)
                        }

                        return h.authenticated({ credentials: { user } });
                    }
                }));
                server.auth.strategy(strategy, strategy);
            },
            extend: (server: Server) => ({
                presenceCount: (path: string) => (server as unknown as { presence: PresenceQueries }).presence.count(path),
                presenceFill: async (path: string, first: number, count: number) => {

                    const store = (broker as { presence?: PresenceStoreView } | undefined)?.presence;
                    if (!store) {
                        throw new Error('presenceFill needs a broker with a presence store (broker: \'redis\')');
                    }

                    const entries = Array.from({ length: count }, (_, i) => ({ path, user: `m${first + i}`, sockets: 1, info: JSON.stringify({ alias: `m${first + i}` }) }));
                    await store.apply(entries);
                }
            })
        }
    };
}
