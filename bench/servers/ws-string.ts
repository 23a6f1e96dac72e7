// Raw ws, naive publish: serialise once per publish, then ws.send(string) to each subscriber
// (ws converts and frames the string again for every socket, one socket write per message).

import { createWsTarget } from './ws-common';
import type { ServerFactory } from './types';

export const create: ServerFactory = (options) => {

    return createWsTarget((subscribers, path, message) => {

        const text = JSON.stringify({ type: 'pub', path, message });
        for (const conn of subscribers) {
            conn.ws.send(text);
        }
    }, options);
};
