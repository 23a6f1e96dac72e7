// Type-checking a consumer of the package (test/entries.ts against this checkout, test/package.ts against the
// installed tarball): one program under --strict, as an application's tsc would build it.

import * as Path from 'node:path';

import * as Ts from 'typescript';

// The module settings a consumer may build with, by the name of their moduleResolution.
export const moduleSettings = {
    node10: { module: Ts.ModuleKind.CommonJS, moduleResolution: Ts.ModuleResolutionKind.Node10 },
    node16: { module: Ts.ModuleKind.Node16, moduleResolution: Ts.ModuleResolutionKind.Node16 },
    nodenext: { module: Ts.ModuleKind.NodeNext, moduleResolution: Ts.ModuleResolutionKind.NodeNext },
    bundler: { module: Ts.ModuleKind.ESNext, moduleResolution: Ts.ModuleResolutionKind.Bundler }
} satisfies Record<string, Ts.CompilerOptions>;

export type Resolution = keyof typeof moduleSettings;

// The errors of `files` in `dir` (each as `file: message`, the file relative to `dir`; the bare message where
// a diagnostic names no file) and the files the program loaded.
export const typeCheck = (dir: string, files: string[], options: Ts.CompilerOptions): { errors: string[]; loaded: string[] } => {

    const program = Ts.createProgram(files.map((file) => Path.join(dir, file)), { ...options, strict: true, noEmit: true });
    const errors = Ts.getPreEmitDiagnostics(program).map((diagnostic) => {

        const message = Ts.flattenDiagnosticMessageText(diagnostic.messageText, '\n');
        return diagnostic.file ? `${Path.relative(dir, diagnostic.file.fileName)}: ${message}` : message;
    });

    return { errors, loaded: program.getSourceFiles().map((file) => file.fileName) };
};
