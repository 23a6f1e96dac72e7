'use strict';

// Whether a Redis answers at REDIS_URL. Synchronous, so that .labrc.js and the suites know it when they load.
// Plain JavaScript: .labrc.js reads it before the TypeScript is built.

const { spawnSync } = require('child_process');

const url = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
const probe = `
    const u = new URL(process.argv[1]);
    const s = require('net').connect(Number(u.port) || 6379, u.hostname);
    s.setTimeout(1000, () => process.exit(1));
    s.on('error', () => process.exit(1));
    s.on('connect', () => s.write('PING\\r\\n'));
    s.on('data', (d) => process.exit(/PONG|NOAUTH/.test(d.toString()) ? 0 : 1));`;

exports.url = url;
exports.available = spawnSync(process.execPath, ['-e', probe, url], { timeout: 3000 }).status === 0;
