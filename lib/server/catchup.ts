// Recovery of one (socket, path): what the socket missed, read from the broker's history.

import type { Recovery } from '../broker';
import type { Position } from '../protocol';

export interface Catchup {
    path: string;
    since: Position | undefined;
    recovery: Recovery;
}
