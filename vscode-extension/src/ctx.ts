//! The extension's state for one window: the language client, the current session, the status bar item and the output channels.

import * as vscode from "vscode";
import {
    ExecuteCommandRequest,
    LanguageClient,
    ResponseError,
    State as ClientState,
    Trace,
    TransportKind,
    type ClientCapabilities,
    type FeatureState,
    type LanguageClientOptions,
    type RequestType,
    type ServerCapabilities,
    type ServerOptions,
    type StaticFeature,
} from "vscode-languageclient/node";

import { findServerBinary, type FoundServerBinary } from "./bootstrap";
import { readConfig, type SandlinkConfig } from "./config";
import * as protocol from "./protocol";
import { BatchedAppender, RunChannelWriter, RunRouter, type RunSink } from "./run_output";
import {
    availableActions,
    commandContext,
    conflictSummary,
    errorActions,
    newConflicts,
    isSessionLive,
    secondsUntilExpiry,
    statusBarText,
    statusBarTooltip,
    commandIds,
    type ServerState,
    type ViewState,
} from "./status";
import type { TrackedRun } from "./sessions_tree";
import { shownCommand } from "./tasks";
import { writeTestLog } from "./test_log";

/**
 * What a run starts: a command line the user typed (sent as `command`; the user wrote it, so no trust is asked), or a
 * `.sandlink.toml` task by name (sent as `task`: the server reads its command and checks the workspace's trust).
 */
export type RunTarget = { command: string } | { task: string };

/** The label of a run in the runs channel, the cancel picker and the test log. */
function runLabel(target: RunTarget): string {
    return "task" in target ? `task ${shownCommand(target.task)}` : target.command;
}

/** The answer that trusts the workspace in the "not trusted" dialog; any other answer (or none) trusts nothing. */
export const trustWorkspaceChoice = "Trust workspace";

/** A run started from this window, while it has not exited. */
interface ActiveRun {
    runId: string;
    commandLine: string;
    /** The run's key in the runs channel writer, assigned before the server has answered with a run id. */
    channelKey: string;
}

/** The URI scheme of read-only documents holding a file's content inside the sandbox, for conflict diffs. */
export const remoteFileScheme = "sandlink-remote";

/**
 * Announces the custom notifications in `initialize` and reads the driver list the server answers with.
 * This is the `experimental` capability gate the contract describes: without it the server falls back to standard LSP.
 */
class SandlinkCapabilityFeature implements StaticFeature {
    constructor(private readonly onServerCapabilities: (capabilities: protocol.ServerExperimentalCapabilities | undefined) => void) {}

    fillClientCapabilities(capabilities: ClientCapabilities): void {
        const announced: protocol.ClientExperimentalCapabilities = { notifications: true };
        capabilities.experimental = { ...(capabilities.experimental as object | undefined), sandlink: announced };
    }

    initialize(capabilities: ServerCapabilities): void {
        const experimental = capabilities.experimental as { sandlink?: protocol.ServerExperimentalCapabilities } | undefined;
        this.onServerCapabilities(experimental?.sandlink);
    }

    getState(): FeatureState {
        return { kind: "static" };
    }

    clear(): void {}
}

export class Ctx implements vscode.Disposable {
    readonly logChannel: vscode.LogOutputChannel;
    readonly runsChannel: vscode.OutputChannel;
    private readonly statusBarItem: vscode.StatusBarItem;
    private readonly runsAppender: BatchedAppender;
    private readonly runsWriter: RunChannelWriter;
    private runsStarted = 0;
    private readonly runRouter = new RunRouter();
    private readonly activeRuns = new Map<string, ActiveRun>();
    /** Runs started from this window, running and finished, oldest first, for the Sessions view. */
    private readonly trackedRuns: TrackedRun[] = [];
    /** Fired when anything the Sessions view draws from this window changes (session, runs, previews). */
    private readonly viewChanged = new vscode.EventEmitter<void>();
    readonly onDidChangeView = this.viewChanged.event;
    /** Fired when the window's session starts or ends, so the Sessions view asks the server for the list again. */
    private readonly sessionChanged = new vscode.EventEmitter<void>();
    readonly onDidChangeSession = this.sessionChanged.event;
    private readonly disposables: vscode.Disposable[] = [];

    private client: LanguageClient | undefined;
    private serverState: ServerState = "starting";
    private drivers: protocol.DriverInfo[] = [];
    private session: protocol.SessionInfo | undefined;
    private config: SandlinkConfig;
    private countdownTimer: NodeJS.Timeout | undefined;
    private lastLoggedStatusText = "";
    private readonly lastContextValues = new Map<string, boolean>();
    private knownConflictPaths = new Set<string>();
    /** Ports the user just asked to preview: their previewReady needs no "Open" prompt, the command opens them itself. */
    private readonly previewPortsBeingOpened = new Set<number>();

    constructor(readonly extensionContext: vscode.ExtensionContext) {
        this.config = readConfig();
        this.logChannel = vscode.window.createOutputChannel("sandlink", { log: true });
        this.runsChannel = vscode.window.createOutputChannel("sandlink runs");
        this.runsAppender = new BatchedAppender(
            (text) => this.runsChannel.append(text),
            (callback) => setTimeout(callback, 50),
        );
        this.runsWriter = new RunChannelWriter((text) => this.runsAppender.push(text));
        this.statusBarItem = vscode.window.createStatusBarItem("sandlink.status", vscode.StatusBarAlignment.Left, 10);
        this.statusBarItem.name = "sandlink";
        this.statusBarItem.command = commandIds.showActions;
        this.statusBarItem.show();
        this.disposables.push(this.logChannel, this.runsChannel, this.statusBarItem, this.viewChanged, this.sessionChanged);
        this.refreshView();
    }

    get currentConfig(): SandlinkConfig {
        return this.config;
    }

    get currentSession(): protocol.SessionInfo | undefined {
        return this.session;
    }

    get isServerRunning(): boolean {
        return this.serverState === "running" || this.serverState === "starting";
    }

    get liveSession(): protocol.SessionInfo | undefined {
        return isSessionLive(this.session) ? this.session : undefined;
    }

    get knownDrivers(): protocol.DriverInfo[] {
        return this.drivers;
    }

    get activeRunList(): ActiveRun[] {
        return [...this.activeRuns.values()];
    }

    get trackedRunList(): readonly TrackedRun[] {
        return this.trackedRuns;
    }

    viewState(): ViewState {
        const driverCapabilities = this.drivers.find((driver) => driver.id === this.session?.driver)?.capabilities;
        return {
            serverState: this.serverState,
            session: this.session,
            driverCapabilities,
            activeRunCount: this.activeRuns.size,
            nowMs: Date.now(),
        };
    }

    reloadConfig(): void {
        this.config = readConfig();
    }

    // -----------------------------------------------------------------------------------------------------------------
    // The language client
    // -----------------------------------------------------------------------------------------------------------------

    async startServer(): Promise<void> {
        this.serverState = "starting";
        this.refreshView();
        const lookup = findServerBinary({
            configuredPath: this.config.serverPath,
            extensionDirectory: this.extensionContext.extensionPath,
            pathVariable: process.env.PATH,
            pathExtensions: process.env.PATHEXT,
            platform: process.platform,
        });
        if (lookup.kind === "missing") {
            this.serverState = "missingBinary";
            this.refreshView();
            this.logChannel.error(lookup.message);
            writeTestLog("serverMissing", { message: lookup.message });
            void vscode.window.showErrorMessage(lookup.message, "Open Settings").then((choice) => {
                if (choice === "Open Settings") {
                    void vscode.commands.executeCommand("workbench.action.openSettings", "sandlink.server.path");
                }
            });
            return;
        }
        await this.startClient(lookup);
    }

    private async startClient(binary: FoundServerBinary): Promise<void> {
        this.logChannel.info(`Starting the sandlink server ${binary.path} (found through the ${binary.source}).`);
        const serverOptions: ServerOptions = {
            command: binary.path,
            // The client appends `--stdio` for the stdio transport; the server accepts it.
            args: ["lsp"],
            transport: TransportKind.stdio,
            // The log goes into an output channel, which shows colour escapes as garbage; NO_COLOR turns them off.
            // The log level travels in initializationOptions.logLevel, which the server applies at initialize.
            options: { env: { ...process.env, NO_COLOR: "1" } },
        };
        const clientOptions: LanguageClientOptions = {
            // Every file of the workspace, so that saves anywhere in it reach the server's sync-on-save.
            documentSelector: [{ scheme: "file" }],
            outputChannel: this.logChannel,
            initializationOptions: { syncOnSave: this.config.syncOnSave, logLevel: this.config.logLevel },
            middleware: {
                didSave: (document, next) => {
                    if (!this.config.syncOnSave) {
                        return Promise.resolve();
                    }
                    writeTestLog("didSave", { uri: document.uri.toString() });
                    return next(document);
                },
            },
        };
        const client = new LanguageClient("sandlink", "sandlink", serverOptions, clientOptions);
        client.registerFeature(
            new SandlinkCapabilityFeature((capabilities) => {
                this.drivers = capabilities?.drivers ?? [];
            }),
        );
        // The server advertises `sandlink.connect`, `sandlink.run`, ... as executeCommand commands for plain LSP
        // clients, and its code actions carry them. The generic client feature would register a VS Code command per id
        // that sends it back to the server; `sandlink.connect`/`sandlink.disconnect` would collide with this
        // extension's palette commands (registering an id twice throws), and the rest would bypass the extension's
        // runs and trust prompt. So it is switched off, and server_commands.ts binds those ids to the extension's flows.
        const executeCommandFeature = client.getFeature(ExecuteCommandRequest.method);
        executeCommandFeature.initialize = () => {};
        executeCommandFeature.register = () => {};

        client.onNotification(protocol.output, (params) => this.runRouter.handleOutput(params));
        client.onNotification(protocol.exit, (params) => this.runRouter.handleExit(params));
        client.onNotification(protocol.sessionState, (params) => this.onSessionState(params));
        client.onNotification(protocol.syncState, (params) => this.onSyncState(params));
        client.onNotification(protocol.previewReady, (params) => this.onPreviewReady(params));
        client.onNotification(protocol.timeoutWarning, (params) => this.onTimeoutWarning(params));
        this.disposables.push(
            client.onDidChangeState((change) => {
                // After a restart from the settings, the old client's late events must not touch the new state.
                if (this.client !== client) {
                    return;
                }
                // The client restarts a crashed server by itself; sessions and runs die with the old process.
                if (change.newState === ClientState.Stopped) {
                    this.serverState = "stopped";
                    this.session = undefined;
                    this.finishAllRunsAsLost();
                } else if (change.newState === ClientState.Starting) {
                    this.serverState = "starting";
                } else if (change.newState === ClientState.Running && change.oldState !== ClientState.Running) {
                    this.serverState = "running";
                }
                this.refreshView();
            }),
        );
        this.client = client;
        try {
            await client.start();
        } catch (error) {
            this.serverState = "stopped";
            this.refreshView();
            const message = `The sandlink server ${binary.path} failed to start: ${describeError(error)}`;
            this.logChannel.error(message);
            writeTestLog("serverFailed", { message });
            void vscode.window.showErrorMessage(message, "Show Log").then((choice) => {
                if (choice === "Show Log") {
                    this.logChannel.show();
                }
            });
            return;
        }
        this.serverState = "running";
        writeTestLog("serverStarted", { path: binary.path, source: binary.source, drivers: this.drivers.map((d) => d.id) });
        this.refreshView();
    }

    async stopServer(): Promise<void> {
        const client = this.client;
        this.client = undefined;
        if (client) {
            try {
                await client.stop(5000);
            } catch (error) {
                this.logChannel.warn(`Stopping the sandlink server failed: ${describeError(error)}`);
            }
        }
        this.serverState = "stopped";
        this.session = undefined;
        this.refreshView();
    }

    async restartServer(): Promise<void> {
        await this.stopServer();
        this.reloadConfig();
        await this.startServer();
    }

    /** Sends a typed request; on failure shows one actionable message and returns undefined. */
    async request<P, R>(type: RequestType<P, R, void>, params: P): Promise<R | undefined> {
        try {
            return await this.requestOrThrow(type, params);
        } catch (error) {
            this.reportError(type.method, error);
            return undefined;
        }
    }

    /** Sends a typed request for optional information (e.g. profiles for a picker); failures are only logged. */
    async requestQuietly<P, R>(type: RequestType<P, R, void>, params: P): Promise<R | undefined> {
        try {
            return await this.requestOrThrow(type, params);
        } catch (error) {
            this.logChannel.warn(`${type.method} failed${errorKind(error) ? ` (${errorKind(error)})` : ""}: ${describeError(error)}`);
            return undefined;
        }
    }

    /** Sends a typed request and lets errors through, for callers that react to `data.kind` themselves. */
    async requestOrThrow<P, R>(type: RequestType<P, R, void>, params: P): Promise<R> {
        const client = this.client;
        if (client === undefined || this.serverState !== "running") {
            throw new Error("the sandlink server is not running; see Sandlink: Show Log.");
        }
        return client.sendRequest(type, params);
    }

    /**
     * Stores a credential. The value is sent in this one request and nowhere else: client tracing, which would print the
     * params to the log, is switched off for the duration of the call.
     */
    async setCredential(profile: string, key: string, value: string): Promise<boolean> {
        const client = this.client;
        if (client === undefined || this.serverState !== "running") {
            void vscode.window.showErrorMessage("sandlink: the server is not running, so the credential was not stored.");
            return false;
        }
        const traceSetting = vscode.workspace.getConfiguration("sandlink").get<string>("trace.server", "off");
        const tracing = traceSetting !== "off";
        try {
            if (tracing) {
                await client.setTrace(Trace.Off);
            }
            await client.sendRequest(protocol.setCredential, { profile, key, value });
            return true;
        } catch (error) {
            // The error path logs the method and the server's message only; the params (with the value) are never logged.
            this.reportError(protocol.setCredential.method, error);
            return false;
        } finally {
            if (tracing) {
                await client.setTrace(Trace.fromString(traceSetting));
            }
        }
    }

    /** Asks once more, naming the fingerprint, then records the key the host presents only if it is that one. */
    async acceptHostKey(hostKey: protocol.HostKeyData): Promise<void> {
        const accept = "Accept";
        const choice = await vscode.window.showWarningMessage(
            `Accept the host key ${hostKey.fingerprint} for ${hostKey.host}? Only if it matches the key on the machine itself.`,
            { modal: true },
            accept,
        );
        if (choice !== accept) {
            return;
        }
        try {
            const result = await this.requestOrThrow(protocol.acceptHostKey, { host: hostKey.host, fingerprint: hostKey.fingerprint });
            void vscode.window.showInformationMessage(`sandlink: recorded the key of ${hostKey.host} in ${result.knownHosts}; connect again.`);
        } catch (failure) {
            this.reportError(protocol.acceptHostKey.method, failure);
        }
    }

    reportError(method: string, error: unknown): void {
        const kind = errorKind(error);
        const message = describeError(error);
        this.logChannel.error(`${method} failed${kind ? ` (${kind})` : ""}: ${message}`);
        writeTestLog("requestFailed", { method, kind, message });
        const actions = errorActions(kind);
        const hostKey = (error as ResponseError<protocol.HostKeyData>).data;
        const canAcceptHostKey = (kind === "hostKeyUnknown" || kind === "hostKeyChanged") && hostKey?.fingerprint !== undefined;
        const labels = [...actions.map((action) => action.label), ...(canAcceptHostKey ? ["Accept Host Key"] : []), "Show Log"];
        void vscode.window.showErrorMessage(`sandlink: ${message}`, ...labels).then((choice) => {
            const picked = actions.find((action) => action.label === choice);
            if (picked !== undefined) {
                void vscode.commands.executeCommand(picked.commandId);
            } else if (choice === "Accept Host Key" && hostKey) {
                void this.acceptHostKey(hostKey);
            } else if (choice === "Show Log") {
                this.logChannel.show();
            }
        });
    }

    // -----------------------------------------------------------------------------------------------------------------
    // Sessions
    // -----------------------------------------------------------------------------------------------------------------

    adoptSession(session: protocol.SessionInfo): void {
        this.session = session;
        this.knownConflictPaths = new Set(session.sync.conflicts.map((conflict) => conflict.path));
        writeTestLog("connected", { sessionId: session.sessionId, driver: session.driver, profile: session.profile, state: session.state });
        this.refreshView();
        this.sessionChanged.fire();
    }

    forgetSession(): void {
        const sessionId = this.session?.sessionId;
        this.session = undefined;
        this.knownConflictPaths.clear();
        writeTestLog("disconnected", { sessionId });
        this.refreshView();
        this.sessionChanged.fire();
    }

    /** Updates the session from `sandlink/status`, e.g. after a sync or an extend. */
    async refreshSession(): Promise<void> {
        const session = this.session;
        if (session === undefined) {
            return;
        }
        try {
            const fresh = await this.requestOrThrow(protocol.status, { sessionId: session.sessionId });
            if (this.session?.sessionId === fresh.sessionId) {
                this.session = fresh;
                this.refreshView();
            }
        } catch (error) {
            this.logChannel.warn(`sandlink/status failed: ${describeError(error)}`);
        }
    }

    private onSessionState(params: protocol.SessionStateParams): void {
        writeTestLog("sessionState", { ...params });
        if (this.session?.sessionId !== params.sessionId) {
            return;
        }
        this.session = { ...this.session, state: params.state, message: params.message ?? this.session.message };
        this.refreshView();
        if (params.state === "expired" || params.state === "error") {
            const what = params.state === "expired" ? "The sandbox expired" : "The sandbox failed";
            void vscode.window
                .showWarningMessage(`sandlink: ${what}${params.message ? `: ${params.message}` : "."}`, "Connect")
                .then((choice) => {
                    if (choice === "Connect") {
                        void vscode.commands.executeCommand(commandIds.connect);
                    }
                });
        }
    }

    private onSyncState(params: protocol.SyncStateParams): void {
        if (this.session?.sessionId !== params.sessionId) {
            return;
        }
        const { sessionId: _sessionId, ...syncState } = params;
        this.session = { ...this.session, sync: { ...this.session.sync, ...syncState } };
        this.refreshView();
        this.noticeNewConflicts(syncState.conflicts);
    }

    noticeNewConflicts(conflicts: protocol.SyncConflict[]): void {
        const unseen = newConflicts(this.knownConflictPaths, conflicts);
        this.knownConflictPaths = new Set(conflicts.map((conflict) => conflict.path));
        if (unseen.length === 0) {
            return;
        }
        writeTestLog("conflicts", { paths: unseen.map((conflict) => conflict.path) });
        // One conflict can be settled from the toast; several go through Compare or Resolve, one file at a time.
        const answers = unseen.length === 1 ? ["Compare", "Keep Mine", "Take Sandbox's"] : ["Compare", "Resolve"];
        void vscode.window.showWarningMessage(`sandlink: sync conflict: ${conflictSummary(unseen)}`, ...answers).then((choice) => {
            if (choice === "Compare") {
                void vscode.commands.executeCommand(commandIds.compareConflict, unseen[0].path);
            } else if (choice === "Keep Mine" || choice === "Take Sandbox's") {
                void vscode.commands.executeCommand(commandIds.resolveConflict, unseen[0].path, choice === "Keep Mine" ? "workspace" : "sandbox");
            } else if (choice === "Resolve") {
                void vscode.commands.executeCommand(commandIds.resolveConflict);
            }
        });
    }

    /** Marks a port as being opened by a command, until `done` is called. */
    expectPreview(port: number): { done: () => void } {
        this.previewPortsBeingOpened.add(port);
        return { done: () => this.previewPortsBeingOpened.delete(port) };
    }

    private onPreviewReady(params: protocol.PreviewReadyParams): void {
        writeTestLog("previewReady", { ...params });
        if (this.session?.sessionId === params.sessionId) {
            const others = this.session.previews.filter((preview) => preview.port !== params.port);
            this.session = { ...this.session, previews: [...others, { port: params.port, url: params.url }] };
            this.refreshView();
        }
        if (this.previewPortsBeingOpened.has(params.port)) {
            return;
        }
        void vscode.window
            .showInformationMessage(`sandlink: port ${params.port} is previewed at ${params.url}`, "Open")
            .then((choice) => {
                if (choice === "Open") {
                    void this.openPreviewUrl(params.url);
                }
            });
    }

    private onTimeoutWarning(params: protocol.TimeoutWarningParams): void {
        writeTestLog("timeoutWarning", { ...params });
        if (params.reason === "runLimit" && params.runId !== undefined) {
            // A run nears its hard limit (the lifecycle policy); the sandbox itself does not expire.
            const runId = params.runId;
            const minutes = Math.max(1, Math.round(params.secondsLeft / 60));
            void vscode.window
                .showWarningMessage(`sandlink: run ${runId} is stopped at its time limit in about ${minutes} min.`, "Extend 30 min")
                .then((choice) => {
                    if (choice === "Extend 30 min") {
                        void this.request(protocol.extend, { sessionId: params.sessionId, seconds: 1800, reason: "runLimit", runId });
                    }
                });
            return;
        }
        if (this.session?.sessionId === params.sessionId) {
            this.session = { ...this.session, expiresAt: params.expiresAt };
            this.refreshView();
        }
        const minutes = Math.max(1, Math.round(params.secondsLeft / 60));
        void vscode.window
            .showWarningMessage(`sandlink: the sandbox expires in about ${minutes} min.`, "Extend")
            .then((choice) => {
                if (choice === "Extend") {
                    void vscode.commands.executeCommand(commandIds.extendTimeout);
                }
            });
    }

    async openPreviewUrl(url: string): Promise<void> {
        let target = this.config.previewOpenIn;
        if (target === "ask") {
            const choice = await vscode.window.showQuickPick(
                [
                    { label: "$(link-external) External browser", target: "external" as const },
                    { label: "$(browser) Simple Browser (inside VS Code)", target: "simpleBrowser" as const },
                ],
                { placeHolder: `Open ${url} in…` },
            );
            if (choice === undefined) {
                return;
            }
            target = choice.target;
        }
        if (target === "simpleBrowser") {
            await vscode.commands.executeCommand("simpleBrowser.show", url);
        } else {
            await vscode.env.openExternal(vscode.Uri.parse(url));
        }
    }

    // -----------------------------------------------------------------------------------------------------------------
    // Runs
    // -----------------------------------------------------------------------------------------------------------------

    /**
     * Starts a command line or a task in the session and streams it into the runs channel; resolves with the run id, or
     * undefined when it did not start (the user was told why, or declined to trust the workspace). `observer` (a task's
     * terminal) also gets the run's output and exit.
     */
    async startRun(session: protocol.SessionInfo, target: RunTarget, observer?: RunSink): Promise<string | undefined> {
        const commandLine = runLabel(target);
        const channelKey = `run-${++this.runsStarted}`;
        if (observer === undefined) {
            // A task's run is shown in its own terminal; the channel still records it, without taking the panel.
            this.runsChannel.show(true);
        }
        this.runsWriter.start(channelKey, commandLine, session.profile ?? session.driver, new Date());
        let runId: string | undefined;
        try {
            runId = await this.requestRunStart(session, target);
        } catch (error) {
            this.runsWriter.abandon(channelKey, `[not started: ${describeError(error)}]`);
            this.runsAppender.flush();
            this.reportError(protocol.run.method, error);
            return undefined;
        }
        if (runId === undefined) {
            this.runsWriter.abandon(channelKey, "[not started: the workspace is not trusted, and you chose not to trust it]");
            this.runsAppender.flush();
            return undefined;
        }
        this.activeRuns.set(runId, { runId, commandLine, channelKey });
        const tracked: TrackedRun = { runId, sessionId: session.sessionId, label: commandLine, startedAt: new Date().toISOString() };
        this.trackedRuns.push(tracked);
        // Enough for the view's recent runs of a few sessions (the runs channel keeps the full history); a run still
        // going is never dropped, however old.
        for (let index = 0; this.trackedRuns.length > 100 && index < this.trackedRuns.length; ) {
            if (this.trackedRuns[index].exit !== undefined) {
                this.trackedRuns.splice(index, 1);
            } else {
                index++;
            }
        }
        writeTestLog("runStarted", { runId, commandLine, task: "task" in target ? target.task : undefined });
        this.refreshView();
        const sink: RunSink = {
            onOutput: (output) => {
                writeTestLog("runOutput", { runId, stream: output.stream, text: output.text });
                this.runsWriter.output(channelKey, output.stream, output.text);
                observer?.onOutput(output);
            },
            onExit: (exit) => {
                this.runsWriter.exit(channelKey, exit);
                this.runsAppender.flush();
                this.activeRuns.delete(runId);
                tracked.exit = exit;
                writeTestLog("runExit", { ...exit });
                this.refreshView();
                observer?.onExit(exit);
            },
        };
        this.runRouter.register(runId, sink);
        return runId;
    }

    /**
     * Sends `sandlink/run`. A task the server refuses with `workspaceNotTrusted` goes through `withTrustRetry` (the
     * server's message, "Trust workspace", one retry); a command line the user typed is never put to that question.
     * Resolves undefined when the user declines.
     */
    private async requestRunStart(session: protocol.SessionInfo, target: RunTarget): Promise<string | undefined> {
        const params: protocol.RunParams =
            "task" in target ? { sessionId: session.sessionId, task: target.task } : { sessionId: session.sessionId, command: target.command };
        const send = () => this.requestOrThrow(protocol.run, params);
        const started = "task" in target ? await this.withTrustRetry(session.workspaceFolder, send) : await send();
        return started?.runId;
    }

    /**
     * Sends a request (`send`) that the server may refuse with `workspaceNotTrusted` (a task, or a connect whose profile
     * sends the workspace elsewhere or loosens the sandbox). The refusal is put to the user once, with the server's
     * message (what would run, where code and which credential would go, what changed); only "Trust workspace" trusts
     * (bound to the fingerprint of the file the message describes) and sends the request again, once: a second refusal
     * is thrown, not asked about. Resolves undefined when the user declines; other errors are thrown to the caller.
     */
    async withTrustRetry<R>(workspaceFolder: string | undefined, send: () => PromiseLike<R>): Promise<R | undefined> {
        try {
            return await send();
        } catch (error) {
            if (errorKind(error) !== "workspaceNotTrusted") {
                throw error;
            }
            if (!(await this.askToTrustWorkspace(workspaceFolder, error as ResponseError<protocol.WorkspaceNotTrustedData>))) {
                return undefined;
            }
            return await send();
        }
    }

    /**
     * Shows a `workspaceNotTrusted` refusal in a modal dialog with a "Trust workspace" button; when it is chosen, trusts
     * the workspace folder (default: the first one) as the message showed it. Resolves true once trusted, false when the
     * user declined; a refused trust (the file changed since it was shown) throws, so the caller reports it.
     */
    async askToTrustWorkspace(
        workspaceFolder: string | undefined,
        refusal: ResponseError<protocol.WorkspaceNotTrustedData>,
    ): Promise<boolean> {
        const fingerprint = typeof refusal.data?.fingerprint === "string" ? refusal.data.fingerprint : undefined;
        writeTestLog("trustAsked", { message: refusal.message, fingerprint });
        const choice = await vscode.window.showWarningMessage(
            "sandlink: this workspace is not trusted",
            { modal: true, detail: refusal.message },
            trustWorkspaceChoice,
        );
        const trusted = choice === trustWorkspaceChoice;
        writeTestLog("trustAnswered", { trusted });
        if (!trusted) {
            return false;
        }
        const folder = workspaceFolder ?? vscode.workspace.workspaceFolders?.[0]?.uri.toString();
        await this.requestOrThrow(protocol.trustWorkspace, { workspaceFolder: folder, trust: true, fingerprint });
        this.logChannel.info(`Trusted the workspace ${folder ?? "(the server's root)"} as its .sandlink.toml was shown.`);
        return true;
    }

    /** Hands a run's output and exit to `sink` (a terminal's), with whatever of it arrived before the caller knew the run. */
    followRun(runId: string, sink: RunSink): void {
        this.runRouter.register(runId, sink);
    }

    /** Runs a program (no shell) and collects its stdout, e.g. to read a file inside the sandbox. */
    async collectRunOutput(session: protocol.SessionInfo, program: string, args: string[]): Promise<string> {
        const { runId } = await this.requestOrThrow(protocol.run, { sessionId: session.sessionId, command: program, args });
        return new Promise<string>((resolve, reject) => {
            const stdout: string[] = [];
            const stderr: string[] = [];
            this.runRouter.register(runId, {
                onOutput: (output) => (output.stream === "stdout" ? stdout : stderr).push(output.text),
                onExit: (exit) => {
                    if (exit.exitCode === 0) {
                        resolve(stdout.join(""));
                    } else {
                        reject(new Error(`${program} ${args.join(" ")} failed in the sandbox: ${stderr.join("").trim()}`));
                    }
                },
            });
        });
    }

    private finishAllRunsAsLost(): void {
        if (this.activeRuns.size === 0) {
            return;
        }
        for (const run of this.activeRuns.values()) {
            this.runsWriter.abandon(run.channelKey, "[lost: the sandlink server stopped]");
        }
        this.runsAppender.flush();
        this.activeRuns.clear();
        // Their sessions died with the server, and the view lists sessions, so the lost runs leave it too.
        for (let index = this.trackedRuns.length - 1; index >= 0; index--) {
            if (this.trackedRuns[index].exit === undefined) {
                this.trackedRuns.splice(index, 1);
            }
        }
    }

    // -----------------------------------------------------------------------------------------------------------------
    // The view: status bar, context keys, countdown
    // -----------------------------------------------------------------------------------------------------------------

    refreshView(): void {
        const state = this.viewState();
        const text = statusBarText(state);
        this.statusBarItem.text = text;
        this.statusBarItem.tooltip = new vscode.MarkdownString(statusBarTooltip(state));
        this.statusBarItem.backgroundColor =
            state.session && (state.session.state === "error" || state.session.sync.conflicts.length > 0)
                ? new vscode.ThemeColor("statusBarItem.warningBackground")
                : undefined;
        // Sync state can change many times a second; only changed context keys are sent to the workbench.
        for (const [key, value] of Object.entries(commandContext(state))) {
            if (this.lastContextValues.get(key) !== value) {
                this.lastContextValues.set(key, value);
                void vscode.commands.executeCommand("setContext", key, value);
            }
        }
        this.viewChanged.fire();
        if (text !== this.lastLoggedStatusText) {
            this.lastLoggedStatusText = text;
            writeTestLog("statusBar", { text });
        }
        // A ticking countdown needs a repaint every second, but only while there is something to count down.
        const needsCountdown = secondsUntilExpiry(state.session, state.nowMs) !== undefined && isSessionLive(state.session);
        if (needsCountdown && this.countdownTimer === undefined) {
            this.countdownTimer = setInterval(() => this.refreshView(), 1000);
        } else if (!needsCountdown && this.countdownTimer !== undefined) {
            clearInterval(this.countdownTimer);
            this.countdownTimer = undefined;
        }
    }

    statusActions() {
        return availableActions(this.viewState());
    }

    /** The workspace folder a new session should mirror: the only one, or the user's pick. */
    async pickWorkspaceFolder(): Promise<vscode.WorkspaceFolder | undefined> {
        const folders = vscode.workspace.workspaceFolders ?? [];
        if (folders.length <= 1) {
            return folders[0];
        }
        return vscode.window.showWorkspaceFolderPick({ placeHolder: "Which folder should the sandbox mirror?" });
    }

    dispose(): void {
        if (this.countdownTimer !== undefined) {
            clearInterval(this.countdownTimer);
        }
        this.runsAppender.flush();
        for (const disposable of this.disposables) {
            disposable.dispose();
        }
    }
}

export function errorKind(error: unknown): string | undefined {
    if (error instanceof ResponseError) {
        const data = error.data as { kind?: unknown } | undefined;
        return typeof data?.kind === "string" ? data.kind : undefined;
    }
    return undefined;
}

export function describeError(error: unknown): string {
    if (error instanceof Error) {
        return error.message;
    }
    return String(error);
}
