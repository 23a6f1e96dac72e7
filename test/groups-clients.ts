// What the one-node and the two-node group tests share: basic auth with one password, and clients that record
// what reaches them on paths the server joined them to (ours) or that connect as a stock nes client.

import * as Basic from '@hapi/basic';
import type * as Hapi from '@hapi/hapi';

import { Client } from '../lib/client';
import type { SubscriptionFlags } from '../lib/client';
import { Nes, url } from './helpers';
import type { NesClient } from './helpers';

export const basic = async (srv: Hapi.Server): Promise<void> => {

    await srv.register(Basic);
    srv.auth.strategy('default', 'basic', {
        validate: (_request: unknown, username: string, password: string) => ({ isValid: password === 'secret', credentials: { user: username } })
    });
    srv.auth.default('default');
};

export const header = (user: string) => ({ headers: { authorization: 'Basic ' + Buffer.from(`${user}:secret`).toString('base64') } });

export interface Seen { message: unknown; flags: SubscriptionFlags }

export const clients = (defer: (fn: () => unknown) => void) => ({

    pulseClient: async (srv: Hapi.Server, user: string, options: { recovery?: boolean } = {}): Promise<Client & { seen: Seen[] }> => {

        const client = new Client(url(srv), options) as Client & { seen: Seen[] };
        client.seen = [];
        client.onError = () => { };
        client.joined('/room/{id}', (message, flags) => client.seen.push({ message, flags }));
        await client.connect({ auth: header(user) });
        defer(() => client.disconnect());
        return client;
    },

    nesClient: async (srv: Hapi.Server, user: string): Promise<NesClient> => {

        const client = new Nes.Client(url(srv));
        client.onError = () => { };
        await client.connect({ auth: header(user) });
        defer(() => client.disconnect());
        return client;
    }
});
