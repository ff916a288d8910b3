//! One factory per palette command; each returns the function VS Code calls, closed over the window's `Ctx`.

import * as vscode from "vscode";

import { openPullRequest, startTask } from "./agent_tasks";
import { credentialChoices } from "./credentials";
import { describeError, remoteFileScheme, type Ctx, type RunTarget } from "./ctx";
import * as protocol from "./protocol";
import { announceHeldBack, askConnectSettings, editSettingsForm, offerToStoreMissingKey } from "./first_use";
import { formatDuration } from "./run_output";
import { reattachChoices, sessionsViewCommandIds, sessionsViewId } from "./sessions_tree";
import { commandIds, isCommandEnabled, type CommandId } from "./status";
import { rememberCommand, shownCommand, taskNamed } from "./tasks";
import { openTerminal } from "./terminal";
import { writeTestLog } from "./test_log";

export type Cmd = (...args: unknown[]) => unknown;

const runHistoryKey = "sandlink.runHistory";
const snapshotsKey = "sandlink.snapshots";

/** Shown when a command that needs a session runs without one (from a keybinding; the palette hides it then). */
function requireLiveSession(ctx: Ctx, commandId: CommandId): protocol.SessionInfo | undefined {
    const session = ctx.liveSession;
    if (session === undefined || !isCommandEnabled(commandId, ctx.viewState())) {
        void vscode.window
            .showInformationMessage("sandlink: not connected to a sandbox. Connect first.", "Connect")
            .then((choice) => {
                if (choice === "Connect") {
                    void vscode.commands.executeCommand(commandIds.connect);
                }
            });
        return undefined;
    }
    return session;
}

// ---------------------------------------------------------------------------------------------------------------------
// Connect and disconnect
// ---------------------------------------------------------------------------------------------------------------------

interface ConnectChoice extends vscode.QuickPickItem {
    params?: Omit<protocol.ConnectParams, "workspaceFolder">;
}

export function connect(ctx: Ctx): Cmd {
    return async (requested?: unknown) => {
        if (ctx.liveSession) {
            void vscode.window.showInformationMessage(
                `sandlink: already connected to ${ctx.liveSession.driver}. Disconnect first to switch.`,
            );
            return;
        }
        // Tests and keybindings may pass `{ driver }` or `{ profile }` to skip the picker.
        let params = asConnectParams(requested);
        if (params === undefined) {
            params = await pickConnectTarget(ctx);
            if (params === undefined) {
                return;
            }
        }
        await connectWith(ctx, params);
    };
}

function asConnectParams(value: unknown): Omit<protocol.ConnectParams, "workspaceFolder"> | undefined {
    if (typeof value !== "object" || value === null) {
        return undefined;
    }
    const candidate = value as { driver?: unknown; profile?: unknown; reuse?: unknown; settings?: unknown };
    const params: Omit<protocol.ConnectParams, "workspaceFolder"> = {};
    if (typeof candidate.driver === "string") params.driver = candidate.driver;
    if (typeof candidate.settings === "object" && candidate.settings !== null && !Array.isArray(candidate.settings)) {
        params.settings = candidate.settings as Record<string, unknown>;
    }
    if (typeof candidate.profile === "string") params.profile = candidate.profile;
    if (typeof candidate.reuse === "string") params.reuse = candidate.reuse;
    return Object.keys(params).length > 0 ? params : undefined;
}

async function pickConnectTarget(ctx: Ctx): Promise<Omit<protocol.ConnectParams, "workspaceFolder"> | undefined> {
    const [profilesResult, driversResult, sessionsResult] = await Promise.all([
        // A server without profile support (or no kept sessions) still offers its drivers, so these are optional.
        ctx.requestQuietly(protocol.profiles, {}),
        ctx.requestQuietly(protocol.drivers, {}),
        ctx.requestQuietly(protocol.sessions, {}),
    ]);
    const items: ConnectChoice[] = [];
    const profiles = [...(profilesResult?.profiles ?? [])].sort((left, right) => {
        // The configured default profile first, then the server's default, then by name.
        const rank = (profile: protocol.ProfileInfo) =>
            profile.name === ctx.currentConfig.defaultProfile ? 0 : profile.default ? 1 : 2;
        return rank(left) - rank(right) || left.name.localeCompare(right.name);
    });
    // Kept sessions (disconnected with keep, or left by a window that closed or crashed) of this window's folders come
    // first: re-attaching one costs no new sandbox and syncs only what changed.
    const workspaceFolders = (vscode.workspace.workspaceFolders ?? []).map((folder) => folder.uri.toString());
    const reattachable = reattachChoices(sessionsResult?.sessions ?? [], workspaceFolders, Date.now());
    if (reattachable.length > 0) {
        items.push({ label: "Kept sessions", kind: vscode.QuickPickItemKind.Separator });
        for (const choice of reattachable) {
            items.push({ label: choice.label, description: choice.description, detail: choice.detail, params: { reuse: choice.sessionId } });
        }
        writeTestLog("reattachOffered", { sessionIds: reattachable.map((choice) => choice.sessionId) });
    }
    if (profiles.length > 0) {
        items.push({ label: "Profiles", kind: vscode.QuickPickItemKind.Separator });
        for (const profile of profiles) {
            items.push({
                label: `$(account) ${profile.name}`,
                description: `${profile.driver}${profile.default ? ", default" : ""}${profile.needsTrust ? ", asks for trust" : ""}`,
                // Said before the pick: this profile sends the workspace elsewhere or loosens the sandbox.
                detail: profile.needsTrust
                    ? "Sends the workspace elsewhere or loosens the sandbox: you are asked to trust this workspace first"
                    : undefined,
                params: { profile: profile.name },
            });
        }
    }
    const drivers = driversResult?.drivers ?? ctx.knownDrivers;
    if (drivers.length > 0) {
        items.push({ label: "Drivers", kind: vscode.QuickPickItemKind.Separator });
        for (const driver of drivers) {
            const asked = (driver.settings ?? []).filter((setting) => setting.askAtConnect).map((setting) => setting.name);
            items.push({
                label: `$(server-environment) ${driver.id}`,
                description: !driver.available ? "unavailable" : asked.length > 0 ? `driver, asks for ${asked.join(", ")}` : "driver, default settings",
                detail: driver.available ? undefined : driver.detail,
                params: driver.available ? { driver: driver.id } : undefined,
            });
        }
    }
    const choice = await vscode.window.showQuickPick(items, {
        placeHolder: "Connect to a sandbox: pick a profile or a driver",
        matchOnDescription: true,
    });
    if (choice === undefined) {
        return undefined;
    }
    if (choice.params === undefined) {
        void vscode.window.showWarningMessage(`sandlink: ${choice.detail ?? "that driver is not available here."}`);
        return undefined;
    }
    return choice.params;
}

export async function connectWith(ctx: Ctx, params: Omit<protocol.ConnectParams, "workspaceFolder">): Promise<void> {
    // A re-attach mirrors the folder its session was made for, which the server knows: no folder is asked for or sent.
    const folder = params.reuse === undefined ? await ctx.pickWorkspaceFolder() : undefined;
    if (folder === undefined && params.reuse === undefined) {
        void vscode.window.showWarningMessage("sandlink: open a folder first; the sandbox mirrors a workspace folder.");
        return;
    }
    // A driver picked without a profile gets what it cannot connect without (docker: an image) asked for here, with
    // the server's suggestions, rather than failing on its defaults.
    if (params.driver !== undefined && params.settings === undefined) {
        const known = ctx.knownDrivers.find((driver) => driver.id === params.driver);
        const driver = known?.settings !== undefined ? known : (await ctx.requestQuietly(protocol.drivers, {}))?.drivers.find((candidate) => candidate.id === params.driver);
        if (driver !== undefined && (driver.settings ?? []).some((setting) => setting.askAtConnect)) {
            const settings = await askConnectSettings(ctx, driver, folder?.uri.toString());
            if (settings === undefined) {
                const needed = (driver.settings ?? []).filter((setting) => setting.askAtConnect).map((setting) => setting.name).join(", ");
                void vscode.window.showInformationMessage(`sandlink: not connected; the ${driver.id} driver needs ${needed}. Save a profile with it (Sandlink: Manage Profiles) to skip this question.`);
                return;
            }
            params = { ...params, settings };
        }
    }
    const target = params.profile ?? params.driver ?? (params.reuse !== undefined ? `the kept session ${params.reuse}` : "the kept session");
    const workspaceFolder = folder?.uri.toString();
    // Only the request shows progress: a trust question is asked between two tries, not under a spinning notification.
    const send = () =>
        vscode.window.withProgress(
            { location: vscode.ProgressLocation.Notification, title: `sandlink: connecting to ${target}…` },
            () => ctx.requestOrThrow(protocol.connect, { ...params, workspaceFolder }),
        );
    let session: protocol.SessionInfo | undefined;
    try {
        // A workspace profile that sends the workspace elsewhere or loosens the sandbox is refused until the workspace
        // is trusted: the same question (and single retry) as a task's.
        session = await ctx.withTrustRetry(workspaceFolder, send);
    } catch (error) {
        // A cloud driver without its key: offered to store it (once), then connected with the profile that holds it.
        const withKey = await offerToStoreMissingKey(ctx, params, error);
        if (withKey === undefined) {
            ctx.reportError(protocol.connect.method, error);
            return;
        }
        params = withKey;
        try {
            session = await ctx.withTrustRetry(workspaceFolder, send);
        } catch (again) {
            ctx.reportError(protocol.connect.method, again);
            return;
        }
    }
    if (session === undefined) {
        ctx.logChannel.info(`Not connected to ${target}: the workspace is not trusted, and you chose not to trust it.`);
        writeTestLog("connectDeclined", { target });
        return;
    }
    ctx.adoptSession(session);
    ctx.logChannel.info(`Connected: session ${session.sessionId} (${session.driver}), remote root ${session.remoteRoot}.`);
    ctx.noticeNewConflicts(session.sync.conflicts);
    void announceHeldBack(ctx, session);
}

export function disconnect(ctx: Ctx): Cmd {
    return async (requested?: unknown) => {
        const session = requireLiveSession(ctx, commandIds.disconnect);
        if (session === undefined) {
            return;
        }
        let keep: boolean;
        if (typeof requested === "object" && requested !== null && "keep" in requested) {
            keep = Boolean((requested as { keep: unknown }).keep);
        } else {
            const choice = await vscode.window.showQuickPick(
                [
                    { label: "$(trash) Disconnect and remove the sandbox", keep: false },
                    { label: "$(debug-pause) Disconnect and keep it running", detail: "Reattach later from Connect.", keep: true },
                ],
                { placeHolder: `Disconnect from ${session.profile ?? session.driver}` },
            );
            if (choice === undefined) {
                return;
            }
            keep = choice.keep;
        }
        const conflicts = ctx.liveSession?.sync.conflicts ?? session.sync.conflicts;
        if (!keep && conflicts.length > 0) {
            // Removing the sandbox would discard its side of each conflict without the user having chosen.
            const takeThenDisconnect = "Take Sandbox's Versions, Then Disconnect";
            const discard = "Discard Sandbox's Versions";
            const answer = await vscode.window.showWarningMessage(
                `sandlink: ${conflicts.length} file(s) changed both here and in the sandbox (${conflicts
                    .slice(0, 3)
                    .map((conflict) => conflict.path)
                    .join(", ")}${conflicts.length > 3 ? ", …" : ""}). Removing the sandbox discards its versions.`,
                { modal: true },
                takeThenDisconnect,
                discard,
            );
            if (answer === undefined) {
                return;
            }
            if (answer === takeThenDisconnect) {
                for (const conflict of conflicts) {
                    if ((await ctx.request(protocol.resolve, { sessionId: session.sessionId, path: conflict.path, keep: "sandbox" })) === undefined) {
                        return;
                    }
                }
            }
        }
        const result = await ctx.request(protocol.disconnect, { sessionId: session.sessionId, keep });
        if (result !== undefined) {
            ctx.forgetSession();
        }
    };
}

// ---------------------------------------------------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------------------------------------------------

interface RunChoice extends vscode.QuickPickItem {
    target: RunTarget;
}

/** `{ task: "name" }` from a keybinding or a test; anything else is not a task request. */
function asTaskRequest(value: unknown): RunTarget | undefined {
    if (typeof value === "object" && value !== null && typeof (value as { task?: unknown }).task === "string") {
        return { task: (value as { task: string }).task };
    }
    return undefined;
}

export function runCommand(ctx: Ctx): Cmd {
    return async (requested?: unknown) => {
        const session = requireLiveSession(ctx, commandIds.runCommand);
        if (session === undefined) {
            return;
        }
        const target =
            typeof requested === "string" ? { command: requested } : (asTaskRequest(requested) ?? (await askForRunTarget(ctx, session)));
        if (target === undefined) {
            return;
        }
        if ("command" in target) {
            if (target.command.trim() === "") {
                return;
            }
            // Only what the user typed enters the history: a task's text comes from the repository and must not be
            // replayed later as a command line of the user's own, past the trust check a task gets.
            const history = ctx.extensionContext.workspaceState.get<string[]>(runHistoryKey, []);
            await ctx.extensionContext.workspaceState.update(runHistoryKey, rememberCommand(history, target.command));
            await ctx.startRun(session, { command: target.command.trim() });
            return;
        }
        await ctx.startRun(session, target);
    };
}

/** An input box that also lists the `.sandlink.toml` tasks and earlier command lines; typing anything runs it. */
async function askForRunTarget(ctx: Ctx, session: protocol.SessionInfo): Promise<RunTarget | undefined> {
    const tasks = await readTasks(ctx, session);
    const taskItems: RunChoice[] = tasks.map((task) => ({
        label: `$(tasklist) ${shownCommand(task.name)}`,
        // Shown as the server's task titles show it: whitespace collapsed and cut, so padding hides nothing.
        description: shownCommand(task.command),
        detail: "task from .sandlink.toml (runs once you trust the workspace)",
        target: { task: task.name },
    }));
    const historyItems: RunChoice[] = ctx.extensionContext.workspaceState
        .get<string[]>(runHistoryKey, [])
        .map((commandLine) => ({ label: `$(history) ${commandLine}`, target: { command: commandLine } }));
    const fixedItems: vscode.QuickPickItem[] = [
        ...(taskItems.length > 0 ? [{ label: "Tasks", kind: vscode.QuickPickItemKind.Separator }, ...taskItems] : []),
        ...(historyItems.length > 0 ? [{ label: "History", kind: vscode.QuickPickItemKind.Separator }, ...historyItems] : []),
    ];
    const quickPick = vscode.window.createQuickPick<vscode.QuickPickItem>();
    quickPick.title = `Run in ${session.profile ?? session.driver}`;
    quickPick.placeholder = "Type a command line or a task's name, or pick a task or an earlier command";
    quickPick.matchOnDescription = true;
    quickPick.items = fixedItems;
    // Whatever is typed is offered as the first item, so Enter always runs what was typed: a task when the text is a
    // task's name (typing `test` means the task, not the shell builtin), else the command line.
    const typedTarget = (value: string): RunTarget => {
        const task = taskNamed(tasks, value);
        return task !== undefined ? { task: task.name } : { command: value };
    };
    quickPick.onDidChangeValue((value) => {
        const target = typedTarget(value);
        const typedItem: RunChoice =
            "task" in target
                ? { label: `$(tasklist) ${value}`, description: "run this task", target, alwaysShow: true }
                : { label: `$(play) ${value}`, description: "run this command line", target, alwaysShow: true };
        quickPick.items = value.trim() === "" ? fixedItems : [typedItem, ...fixedItems];
    });
    return new Promise<RunTarget | undefined>((resolve) => {
        let settled = false;
        quickPick.onDidAccept(() => {
            const selected = quickPick.selectedItems[0] as RunChoice | undefined;
            settled = true;
            resolve(selected?.target ?? typedTarget(quickPick.value));
            quickPick.hide();
        });
        quickPick.onDidHide(() => {
            if (!settled) {
                resolve(undefined);
            }
            quickPick.dispose();
        });
        quickPick.show();
    });
}

/** The workspace's tasks, from the server (which owns `.sandlink.toml`); none when it cannot say. */
async function readTasks(ctx: Ctx, session: protocol.SessionInfo): Promise<protocol.TaskEntry[]> {
    const workspaceFolder = session.workspaceFolder ?? vscode.workspace.workspaceFolders?.[0]?.uri.toString();
    const result = await ctx.requestQuietly(protocol.tasks, workspaceFolder ? { workspaceFolder } : {});
    if (result?.error) {
        ctx.logChannel.warn(`Tasks could not be read: ${result.error}`);
    }
    return result?.tasks ?? [];
}

export function cancelRun(ctx: Ctx): Cmd {
    return async () => {
        const runs = ctx.activeRunList;
        if (runs.length === 0) {
            void vscode.window.showInformationMessage("sandlink: no run in progress.");
            return;
        }
        const run =
            runs.length === 1
                ? runs[0]
                : (
                      await vscode.window.showQuickPick(
                          runs.map((candidate) => ({ label: candidate.commandLine, description: candidate.runId, run: candidate })),
                          { placeHolder: "Cancel which run?" },
                      )
                  )?.run;
        if (run !== undefined) {
            await ctx.request(protocol.cancel, { runId: run.runId });
        }
    };
}

// ---------------------------------------------------------------------------------------------------------------------
// Sync and conflicts
// ---------------------------------------------------------------------------------------------------------------------

export function syncNow(ctx: Ctx): Cmd {
    return async (requested?: unknown) => {
        const session = requireLiveSession(ctx, commandIds.syncNow);
        if (session === undefined) {
            return;
        }
        let direction: protocol.SyncDirection;
        if (requested === "up" || requested === "down" || requested === "both") {
            direction = requested;
        } else {
            const choice = await vscode.window.showQuickPick(
                [
                    { label: "$(arrow-up) Up", description: "local changes to the sandbox", direction: "up" as const },
                    { label: "$(arrow-down) Down", description: "sandbox changes to the local folder", direction: "down" as const },
                    { label: "$(arrow-swap) Both", description: "each way; files changed on both sides are conflicts", direction: "both" as const },
                ],
                { placeHolder: "Sync which way?" },
            );
            if (choice === undefined) {
                return;
            }
            direction = choice.direction;
        }
        const result = await vscode.window.withProgress(
            { location: vscode.ProgressLocation.Window, title: `sandlink: syncing ${direction}` },
            () => ctx.request(protocol.sync, { sessionId: session.sessionId, direction }),
        );
        if (result === undefined) {
            return;
        }
        void vscode.window.setStatusBarMessage(
            `sandlink: ${result.uploaded} up, ${result.downloaded} down, ${result.deleted} deleted in ${formatDuration(result.durationMs)}`,
            5000,
        );
        ctx.noticeNewConflicts(result.conflicts);
        await ctx.refreshSession();
        void offerBroughtFiles(session, result);
    };
}

/** After a sync that changed workspace files: says how many came, and opens the one the user picks from the list. */
async function offerBroughtFiles(session: protocol.SessionInfo, result: protocol.SyncResult): Promise<void> {
    const brought = result.brought ?? [];
    const removed = result.removedLocally ?? [];
    if (brought.length === 0 && removed.length === 0) {
        return;
    }
    const parts = [`${result.downloaded} file(s) came from the sandbox`];
    if (result.deleted > 0 && removed.length > 0) {
        parts.push(`${removed.length} removed locally`);
    }
    const choice = await vscode.window.showInformationMessage(`sandlink: ${parts.join(", ")}.`, "Show Files");
    if (choice !== "Show Files") {
        return;
    }
    const folder = session.workspaceFolder ? vscode.Uri.parse(session.workspaceFolder) : vscode.workspace.workspaceFolders?.[0]?.uri;
    const picked = await vscode.window.showQuickPick(
        [
            ...brought.map((file) => ({ label: `$(cloud-download) ${file}`, file, description: "from the sandbox" })),
            ...removed.map((file) => ({ label: `$(trash) ${file}`, file: undefined, description: "removed, as in the sandbox" })),
        ],
        { placeHolder: "Files this sync changed in the workspace" },
    );
    if (picked?.file !== undefined && folder !== undefined) {
        await vscode.window.showTextDocument(vscode.Uri.joinPath(folder, picked.file));
    }
}

/** Opens a diff of a conflicting file: the sandbox's version on the left, the local one on the right. */
export function compareConflict(ctx: Ctx): Cmd {
    return async (requestedPath?: unknown) => {
        const session = requireLiveSession(ctx, commandIds.compareConflict);
        if (session === undefined) {
            return;
        }
        const conflicts = session.sync.conflicts;
        let conflictPath = typeof requestedPath === "string" ? requestedPath : undefined;
        if (conflictPath === undefined) {
            if (conflicts.length === 0) {
                void vscode.window.showInformationMessage("sandlink: no sync conflicts.");
                return;
            }
            conflictPath = (
                await vscode.window.showQuickPick(
                    conflicts.map((conflict) => ({ label: conflict.path, description: conflict.reason })),
                    { placeHolder: "Compare which file?" },
                )
            )?.label;
            if (conflictPath === undefined) {
                return;
            }
        }
        const folderUri = session.workspaceFolder ? vscode.Uri.parse(session.workspaceFolder) : vscode.workspace.workspaceFolders?.[0]?.uri;
        if (folderUri === undefined) {
            return;
        }
        const localUri = vscode.Uri.joinPath(folderUri, conflictPath);
        const remoteUri = vscode.Uri.from({
            scheme: remoteFileScheme,
            path: "/" + conflictPath.replace(/^\/+/, ""),
            query: new URLSearchParams({ session: session.sessionId }).toString(),
        });
        await vscode.commands.executeCommand("vscode.diff", remoteUri, localUri, `${conflictPath} (sandbox ↔ local)`);
        // The diff is where the decision is made, so the two answers are offered right beside it.
        const choice = await vscode.window.showInformationMessage(
            `sandlink: ${conflictPath} changed in both places. Keep which version?`,
            keepWorkspaceLabel,
            takeSandboxLabel,
        );
        if (choice !== undefined) {
            await resolveConflictTo(ctx, session, conflictPath, choice === keepWorkspaceLabel ? "workspace" : "sandbox");
        }
    };
}

const keepWorkspaceLabel = "Keep Mine";
const takeSandboxLabel = "Take Sandbox's";

/**
 * Settles a conflict: "Keep Mine" copies the workspace's version to the sandbox, "Take Sandbox's" brings the sandbox's
 * version into the workspace. From the palette it asks which file and which side; from the diff editor's title (a
 * `keep` argument and the diff's file) it asks nothing.
 */
export function resolveConflict(ctx: Ctx): Cmd {
    return async (resource?: unknown, keep?: unknown) => {
        const session = requireLiveSession(ctx, commandIds.resolveConflict);
        if (session === undefined) {
            return;
        }
        const conflicts = session.sync.conflicts;
        let conflictPath = conflictPathOf(session, resource);
        if (conflictPath === undefined) {
            if (conflicts.length === 0) {
                void vscode.window.showInformationMessage("sandlink: no sync conflicts.");
                return;
            }
            conflictPath =
                conflicts.length === 1
                    ? conflicts[0].path
                    : (
                          await vscode.window.showQuickPick(
                              conflicts.map((conflict) => ({ label: conflict.path, description: conflict.reason })),
                              { placeHolder: "Resolve which conflict?" },
                          )
                      )?.label;
            if (conflictPath === undefined) {
                return;
            }
        }
        let side: "workspace" | "sandbox" | undefined = keep === "workspace" ? "workspace" : keep === "sandbox" ? "sandbox" : undefined;
        if (side === undefined) {
            side = (
                await vscode.window.showQuickPick(
                    [
                        { label: `$(check) ${keepWorkspaceLabel}`, description: "the workspace's version goes to the sandbox", side: "workspace" as const },
                        { label: `$(cloud-download) ${takeSandboxLabel}`, description: "the sandbox's version replaces the workspace's", side: "sandbox" as const },
                    ],
                    { placeHolder: `${conflictPath}: keep which version?` },
                )
            )?.side;
            if (side === undefined) {
                return;
            }
        }
        await resolveConflictTo(ctx, session, conflictPath, side);
    };
}

/** The conflict path a command argument names: a path as listed, or a file URI inside the workspace (the diff's). */
function conflictPathOf(session: protocol.SessionInfo, resource: unknown): string | undefined {
    if (typeof resource === "string") {
        return resource;
    }
    if (!(resource instanceof vscode.Uri)) {
        return undefined;
    }
    if (resource.scheme === remoteFileScheme) {
        return resource.path.replace(/^\/+/, "");
    }
    const folder = session.workspaceFolder ? vscode.Uri.parse(session.workspaceFolder) : vscode.workspace.workspaceFolders?.[0]?.uri;
    if (folder === undefined || resource.scheme !== "file" || !resource.path.startsWith(folder.path + "/")) {
        return undefined;
    }
    return resource.path.slice(folder.path.length + 1);
}

async function resolveConflictTo(ctx: Ctx, session: protocol.SessionInfo, conflictPath: string, keep: "workspace" | "sandbox") {
    const result = await ctx.request(protocol.resolve, { sessionId: session.sessionId, path: conflictPath, keep });
    if (result === undefined) {
        return;
    }
    void vscode.window.setStatusBarMessage(
        keep === "workspace" ? `sandlink: kept your ${conflictPath}; the sandbox has it now` : `sandlink: took the sandbox's ${conflictPath}`,
        5000,
    );
    await ctx.refreshSession();
}

/**
 * Serves `sandlink-remote:` documents: a file's content inside the sandbox. The protocol has no file-read request, so the
 * content is read with `cat` run without a shell (no quoting issues), which every driver with `exec` supports.
 */
export class RemoteFileContentProvider implements vscode.TextDocumentContentProvider {
    constructor(private readonly ctx: Ctx) {}

    async provideTextDocumentContent(uri: vscode.Uri): Promise<string> {
        const session = this.ctx.liveSession;
        const sessionId = new URLSearchParams(uri.query).get("session");
        if (session === undefined || session.sessionId !== sessionId) {
            return "The sandbox session of this document has ended.";
        }
        const relativePath = uri.path.replace(/^\/+/, "");
        try {
            return await this.ctx.collectRunOutput(session, "cat", ["--", relativePath]);
        } catch (error) {
            return `Could not read ${relativePath} from the sandbox: ${describeError(error)}`;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------------
// Previews, timeout, snapshots
// ---------------------------------------------------------------------------------------------------------------------

export function openPreview(ctx: Ctx): Cmd {
    return async (requestedPort?: unknown) => {
        const session = requireLiveSession(ctx, commandIds.openPreview);
        if (session === undefined) {
            return;
        }
        let port = typeof requestedPort === "number" ? requestedPort : undefined;
        if (port === undefined) {
            const items: Array<vscode.QuickPickItem & { port?: number; url?: string }> = session.previews.map((preview) => ({
                label: `$(globe) port ${preview.port}`,
                description: preview.url,
                port: preview.port,
                url: preview.url,
            }));
            items.push({ label: "$(add) Another port…" });
            const choice = await vscode.window.showQuickPick(items, { placeHolder: "Open which preview?" });
            if (choice === undefined) {
                return;
            }
            if (choice.url !== undefined) {
                await ctx.openPreviewUrl(choice.url);
                return;
            }
            const typed = await vscode.window.showInputBox({
                prompt: "Port of a server listening inside the sandbox",
                validateInput: (value) => (isPort(value) ? undefined : "A port number from 1 to 65535"),
            });
            if (typed === undefined) {
                return;
            }
            port = Number(typed);
        }
        const expectation = ctx.expectPreview(port);
        const result = await ctx.request(protocol.preview, { sessionId: session.sessionId, port }).finally(() => expectation.done());
        if (result !== undefined) {
            await ctx.openPreviewUrl(result.url);
            await ctx.refreshSession();
        }
    };
}

function isPort(value: string): boolean {
    const port = Number(value);
    return /^\d+$/.test(value.trim()) && port >= 1 && port <= 65535;
}

export function extendTimeout(ctx: Ctx): Cmd {
    return async (requestedSeconds?: unknown) => {
        const session = requireLiveSession(ctx, commandIds.extendTimeout);
        if (session === undefined) {
            return;
        }
        let seconds = typeof requestedSeconds === "number" ? requestedSeconds : undefined;
        if (seconds === undefined) {
            const choice = await vscode.window.showQuickPick(
                [
                    { label: "15 minutes", seconds: 15 * 60 },
                    { label: "30 minutes", seconds: 30 * 60 },
                    { label: "1 hour", seconds: 60 * 60 },
                    { label: "2 hours", seconds: 2 * 60 * 60 },
                ],
                { placeHolder: "Extend the sandbox's lifetime by…" },
            );
            if (choice === undefined) {
                return;
            }
            seconds = choice.seconds;
        }
        const result = await ctx.request(protocol.extend, { sessionId: session.sessionId, seconds });
        if (result !== undefined) {
            await ctx.refreshSession();
            void vscode.window.setStatusBarMessage(`sandlink: the sandbox now expires at ${result.expiresAt}`, 5000);
        }
    };
}

interface RememberedSnapshot {
    snapshotId: string;
    name?: string;
    driver: string;
    profile?: string;
    takenAt: string;
}

export function snapshot(ctx: Ctx): Cmd {
    return async () => {
        const session = requireLiveSession(ctx, commandIds.snapshot);
        if (session === undefined) {
            return;
        }
        const name = await vscode.window.showInputBox({ prompt: "Snapshot name (optional)" });
        if (name === undefined) {
            return;
        }
        const result = await vscode.window.withProgress(
            { location: vscode.ProgressLocation.Notification, title: "sandlink: taking a snapshot…" },
            () => ctx.request(protocol.snapshot, { sessionId: session.sessionId, name: name.trim() || undefined }),
        );
        if (result === undefined) {
            return;
        }
        // The protocol has no request listing snapshots, so the ones taken from this workspace are remembered here for Restore.
        const remembered = ctx.extensionContext.globalState.get<RememberedSnapshot[]>(snapshotsKey, []);
        const entry: RememberedSnapshot = {
            snapshotId: result.snapshotId,
            name: name.trim() || undefined,
            driver: session.driver,
            profile: session.profile,
            takenAt: new Date().toISOString(),
        };
        await ctx.extensionContext.globalState.update(snapshotsKey, [entry, ...remembered].slice(0, 50));
        const note = result.note === undefined ? "" : ` ${result.note}`;
        void vscode.window.showInformationMessage(`sandlink: snapshot ${result.snapshotId} taken.${note}`);
    };
}

export function restore(ctx: Ctx): Cmd {
    return async () => {
        if (ctx.liveSession) {
            void vscode.window.showInformationMessage("sandlink: disconnect first; Restore starts a new session.");
            return;
        }
        const remembered = ctx.extensionContext.globalState.get<RememberedSnapshot[]>(snapshotsKey, []);
        const items: Array<vscode.QuickPickItem & { snapshot?: RememberedSnapshot }> = remembered.map((entry) => ({
            label: `$(device-camera) ${entry.name ?? entry.snapshotId}`,
            description: `${entry.profile ?? entry.driver}, ${entry.takenAt}`,
            detail: entry.snapshotId,
            snapshot: entry,
        }));
        items.push({ label: "$(edit) Enter a snapshot id…" });
        const choice = await vscode.window.showQuickPick(items, { placeHolder: "Restore which snapshot?" });
        if (choice === undefined) {
            return;
        }
        let params: protocol.RestoreParams;
        if (choice.snapshot) {
            params = { snapshotId: choice.snapshot.snapshotId, profile: choice.snapshot.profile, driver: choice.snapshot.profile ? undefined : choice.snapshot.driver };
        } else {
            const snapshotId = await vscode.window.showInputBox({ prompt: "Snapshot id" });
            if (!snapshotId) {
                return;
            }
            params = { snapshotId: snapshotId.trim() };
        }
        const session = await vscode.window.withProgress(
            { location: vscode.ProgressLocation.Notification, title: "sandlink: restoring…" },
            () => ctx.request(protocol.restore, params),
        );
        if (session !== undefined) {
            ctx.adoptSession(session);
        }
    };
}

// ---------------------------------------------------------------------------------------------------------------------
// Profiles and credentials
// ---------------------------------------------------------------------------------------------------------------------

export function manageProfiles(ctx: Ctx): Cmd {
    return async () => {
        const result = await ctx.request(protocol.profiles, {});
        if (result === undefined) {
            return;
        }
        const items: Array<vscode.QuickPickItem & { profile?: protocol.ProfileInfo }> = result.profiles.map((profile) => ({
            label: `$(account) ${profile.name}`,
            description: `${profile.driver}${profile.default ? ", default" : ""}${profile.hasCredentials ? ", has credentials" : ""}`,
            profile,
        }));
        items.push({ label: "$(add) New profile…" });
        const choice = await vscode.window.showQuickPick(items, { placeHolder: "Profiles" });
        if (choice === undefined) {
            return;
        }
        if (choice.profile === undefined) {
            await createProfile(ctx);
            return;
        }
        const profile = choice.profile;
        const action = await vscode.window.showQuickPick(
            [
                { label: "$(plug) Connect", action: "connect" as const },
                { label: "$(star) Make default", action: "default" as const },
                { label: "$(key) Set credential…", action: "credential" as const },
                { label: "$(trash) Delete", description: "and its stored credentials", action: "delete" as const },
            ],
            { placeHolder: `Profile ${profile.name} (${profile.driver})` },
        );
        switch (action?.action) {
            case "connect":
                await connectWith(ctx, { profile: profile.name });
                break;
            case "default":
                await ctx.request(protocol.saveProfile, { name: profile.name, driver: profile.driver, settings: profile.settings, default: true });
                break;
            case "credential":
                await setCredential(ctx)(profile.name);
                break;
            case "delete": {
                const confirmation = await vscode.window.showWarningMessage(
                    `Delete the sandlink profile "${profile.name}" and its stored credentials?`,
                    { modal: true },
                    "Delete",
                );
                if (confirmation === "Delete") {
                    await ctx.request(protocol.deleteProfile, { name: profile.name });
                }
                break;
            }
            default:
                break;
        }
    };
}

async function createProfile(ctx: Ctx): Promise<void> {
    const name = await vscode.window.showInputBox({
        prompt: "Profile name",
        validateInput: (value) => (/^[A-Za-z0-9_.-]+$/.test(value) ? undefined : "Letters, digits, '.', '_' and '-' only"),
    });
    if (name === undefined) {
        return;
    }
    const drivers = (await ctx.requestQuietly(protocol.drivers, {}))?.drivers ?? ctx.knownDrivers;
    const driver = await vscode.window.showQuickPick(
        drivers.map((candidate) => ({ label: candidate.id, description: candidate.available ? undefined : "unavailable", detail: candidate.detail })),
        { placeHolder: "Driver" },
    );
    if (driver === undefined) {
        return;
    }
    const driverInfo = drivers.find((candidate) => candidate.id === driver.label);
    if (driverInfo === undefined) {
        return;
    }
    // A form generated from the driver's own settings, with the server's suggestions; secrets go in Set Credential.
    const settings = await editSettingsForm(ctx, driverInfo, {}, (await ctx.pickWorkspaceFolder())?.uri.toString());
    if (settings === undefined) {
        return;
    }
    const saved = await ctx.request(protocol.saveProfile, { name, driver: driver.label, settings });
    if (saved !== undefined) {
        void vscode.window.showInformationMessage(`sandlink: profile ${name} saved.`);
    }
}

export function setCredential(ctx: Ctx): Cmd {
    return async (requestedProfile?: unknown) => {
        let profileName = typeof requestedProfile === "string" ? requestedProfile : undefined;
        let driverId: string | undefined;
        if (profileName === undefined) {
            const result = await ctx.request(protocol.profiles, {});
            if (result === undefined) {
                return;
            }
            if (result.profiles.length === 0) {
                void vscode.window.showInformationMessage("sandlink: create a profile first (Sandlink: Manage Profiles).");
                return;
            }
            const picked = await vscode.window.showQuickPick(
                result.profiles.map((profile) => ({ label: profile.name, description: profile.driver })),
                { placeHolder: "Store a credential for which profile?" },
            );
            if (picked === undefined) {
                return;
            }
            profileName = picked.label;
            driverId = picked.description;
        } else {
            const listed = await ctx.requestQuietly(protocol.profiles, {});
            driverId = listed?.profiles.find((profile) => profile.name === profileName)?.driver;
        }
        const key = await pickCredentialKey(ctx, profileName, driverId);
        if (key === undefined) {
            return;
        }
        // password: true hides the typed value; it is passed straight to the request and not kept in any variable beyond it.
        const value = await vscode.window.showInputBox({ prompt: `Value of ${key}`, password: true, ignoreFocusOut: true });
        if (value === undefined || value === "") {
            return;
        }
        if (await ctx.setCredential(profileName, key, value)) {
            writeTestLog("credentialStored", { profile: profileName, key });
            void vscode.window.showInformationMessage(`sandlink: ${key} stored in the system keychain for ${profileName}.`);
        }
    };
}

/** The credential name: picked from those the profile's driver declares, or typed (the only way when it declares none). */
async function pickCredentialKey(ctx: Ctx, profileName: string, driverId: string | undefined): Promise<string | undefined> {
    const choices = credentialChoices(ctx.knownDrivers, driverId);
    if (choices.length > 0) {
        writeTestLog("credentialKeysOffered", { profile: profileName, keys: choices.flatMap((choice) => choice.key ?? []) });
        const choice = await vscode.window.showQuickPick(choices, {
            placeHolder: `Which credential of ${profileName} (${driverId})?`,
        });
        if (choice === undefined) {
            return undefined;
        }
        if (choice.key !== undefined) {
            return choice.key;
        }
    }
    const typed = await vscode.window.showInputBox({
        prompt: `Credential name for ${profileName} (e.g. apiKey, token)`,
        validateInput: (value) => (value.trim() === "" ? "A name is required" : undefined),
    });
    return typed?.trim();
}

// ---------------------------------------------------------------------------------------------------------------------
// Log and the status bar menu
// ---------------------------------------------------------------------------------------------------------------------

export function showLog(ctx: Ctx): Cmd {
    return () => ctx.logChannel.show();
}

/** Opens the Sessions view with a fresh list (also the action of the "too many sandboxes" error). */
export function showSessions(_ctx: Ctx): Cmd {
    return async () => {
        await vscode.commands.executeCommand(`${sessionsViewId}.focus`);
        await vscode.commands.executeCommand(sessionsViewCommandIds.refresh);
    };
}

export function showActions(ctx: Ctx): Cmd {
    return async () => {
        const actions = ctx.statusActions();
        const choice = await vscode.window.showQuickPick(
            actions.map((action) => ({ label: action.label, description: action.description, commandId: action.commandId })),
            { placeHolder: "sandlink" },
        );
        if (choice !== undefined) {
            await vscode.commands.executeCommand(choice.commandId);
        }
    };
}

/** Every palette command with its factory; main.ts registers them all, and package.json contributes the same ids. */
export const commandFactories: Record<CommandId, (ctx: Ctx) => Cmd> = {
    [commandIds.connect]: connect,
    [commandIds.disconnect]: disconnect,
    [commandIds.runCommand]: runCommand,
    [commandIds.cancelRun]: cancelRun,
    [commandIds.syncNow]: syncNow,
    [commandIds.openPreview]: openPreview,
    [commandIds.extendTimeout]: extendTimeout,
    [commandIds.snapshot]: snapshot,
    [commandIds.restore]: restore,
    [commandIds.manageProfiles]: manageProfiles,
    [commandIds.setCredential]: setCredential,
    [commandIds.showLog]: showLog,
    [commandIds.showActions]: showActions,
    [commandIds.compareConflict]: compareConflict,
    [commandIds.resolveConflict]: resolveConflict,
    [commandIds.showSessions]: showSessions,
    [commandIds.openTerminal]: openTerminal,
    [commandIds.startTask]: startTask,
    [commandIds.openPullRequest]: openPullRequest,
};
