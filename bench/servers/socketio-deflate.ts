// socket.io 4 with `perMessageDeflate: true`: ws compresses every message per socket, with a context each.

import { createSocketIo } from './socketio';
import type { ServerFactory } from './types';

export const create: ServerFactory = async (options = {}) => createSocketIo(options, true);
