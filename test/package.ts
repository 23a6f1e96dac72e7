// The package as applications see it: which entry loads what.

import { execFileSync } from 'node:child_process';
import { join } from 'node:path';

import * as Code from '@hapi/code';
import * as Lab from '@hapi/lab';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { describe, it } = lab;

const libDir = join(__dirname, '..', 'lib');

// The modules a fresh process has loaded after requiring `file`.
const loadedBy = (file: string): string[] => {

    const script = `require(${JSON.stringify(file)}); console.log(JSON.stringify(Object.keys(require.cache)));`;
    return JSON.parse(execFileSync(process.execPath, ['-e', script], { encoding: 'utf8' }));
};

describe('entries', () => {

    it('the main entry and the client entry never load @redis/client; hapi-pulse/redis does', () => {

        const redis = (modules: string[]) => modules.filter((file) => file.includes(join('node_modules', '@redis')));
        expect(redis(loadedBy(join(libDir, 'index.js')))).to.equal([]);
        expect(redis(loadedBy(join(libDir, 'client.js')))).to.equal([]);
        expect(redis(loadedBy(join(libDir, 'redis.js')))).to.not.equal([]);

        const Pulse = require(join(libDir, 'index.js'));
        expect(Pulse.RedisBroker).to.not.exist();
        expect(require(join(libDir, 'redis.js')).RedisBroker).to.be.a.function();
    });
});
