// hapi-pulse from another build, for before/after figures in one run: BENCH_BASE=/path/to/checkout (its
// dist/lib/index.js is loaded, e.g. a worktree of main built before a change). Same options as 'pulse'.

import Path from 'node:path';

import { createPulseTarget } from './pulse';
import type { ServerFactory } from './types';

export const basePath = (): string | null => (process.env.BENCH_BASE ? Path.resolve(process.env.BENCH_BASE, 'dist', 'lib', 'index.js') : null);

export const create: ServerFactory = async (options = {}) => createPulseTarget(require(basePath()!), options);
