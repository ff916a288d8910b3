//! The Sessions view in the sandlink activity bar container: the server's sessions as a tree, and the commands of its items.

import * as fs from "node:fs";
import * as vscode from "vscode";

import { connectWith } from "./commands";
import { describeError, type Ctx } from "./ctx";
import * as protocol from "./protocol";
import {
    sessionsTree,
    sessionsViewCommandIds,
    sessionsViewId,
    type RunNode,
    type SessionNode,
    type SessionsTreeNode,
} from "./sessions_tree";
import { commandIds } from "./status";
import { createSandboxTerminal } from "./terminal";
import { writeTestLog } from "./test_log";
import { allowHeldBack } from "./first_use";

export class SessionsView implements vscode.TreeDataProvider<SessionsTreeNode>, vscode.Disposable {
    private readonly changed = new vscode.EventEmitter<SessionsTreeNode | undefined>();
    readonly onDidChangeTreeData = this.changed.event;
    private readonly disposables: vscode.Disposable[] = [];
    private readonly treeView: vscode.TreeView<SessionsTreeNode>;
    /** The last `sandlink/sessions` answer; the window's own session and runs are merged in at each redraw. */
    private listed: protocol.SessionInfo[] = [];
    private listing: Promise<void> | undefined;
    private lastLoggedTree = "";

    constructor(private readonly ctx: Ctx) {
        this.treeView = vscode.window.createTreeView(sessionsViewId, { treeDataProvider: this, showCollapseAll: true });
        this.disposables.push(
            this.changed,
            this.treeView,
            // The list costs the server a check per kept sandbox, so it is asked for only when the view is shown, the
            // window's session starts or ends, or the user refreshes; everything else redraws from what is known.
            this.treeView.onDidChangeVisibility((event) => {
                if (event.visible) {
                    void this.refresh();
                }
            }),
            ctx.onDidChangeSession(() => {
                if (this.treeView.visible) {
                    void this.refresh();
                }
            }),
            ctx.onDidChangeView(() => {
                if (this.treeView.visible) {
                    this.changed.fire(undefined);
                }
            }),
        );
    }

    /** Asks the server for its sessions again and redraws; concurrent calls share one request. */
    refresh(): Promise<void> {
        this.listing ??= (async () => {
            try {
                const result = await this.ctx.requestQuietly(protocol.sessions, {});
                this.listed = result?.sessions ?? [];
            } finally {
                this.listing = undefined;
            }
            this.changed.fire(undefined);
        })();
        return this.listing;
    }

    getChildren(node?: SessionsTreeNode): SessionsTreeNode[] {
        if (node !== undefined) {
            return node.children;
        }
        const nodes = sessionsTree({
            sessions: this.listed,
            currentSession: this.ctx.currentSession,
            workspaceFolders: (vscode.workspace.workspaceFolders ?? []).map((folder) => folder.uri.toString()),
            runs: this.ctx.trackedRunList,
            nowMs: Date.now(),
        });
        this.logTree(nodes);
        return nodes;
    }

    getTreeItem(node: SessionsTreeNode): vscode.TreeItem {
        const collapsible =
            node.children.length === 0
                ? vscode.TreeItemCollapsibleState.None
                : node.expanded
                  ? vscode.TreeItemCollapsibleState.Expanded
                  : vscode.TreeItemCollapsibleState.Collapsed;
        const item = new vscode.TreeItem(node.label, collapsible);
        item.id = node.id;
        item.description = node.description;
        item.tooltip = node.tooltip;
        item.iconPath = new vscode.ThemeIcon(node.icon);
        item.contextValue = node.contextValue;
        if (node.kind === "heldBack" && node.workspaceFolder !== undefined) {
            const file = vscode.Uri.joinPath(vscode.Uri.parse(node.workspaceFolder), node.path);
            item.command = { title: "Open", command: "vscode.open", arguments: [file] };
        } else if (node.kind === "preview") {
            item.command = { title: "Open Preview", command: sessionsViewCommandIds.openPreview, arguments: [node] };
        }
        return item;
    }

    /** What the view shows, for the end-to-end test: one line per node, as label and description. */
    private logTree(nodes: SessionsTreeNode[]): void {
        const flatten = (list: SessionsTreeNode[], depth: number): Array<Record<string, unknown>> =>
            list.flatMap((node) => [
                { depth, id: node.id, label: node.label, description: node.description, contextValue: node.contextValue },
                ...flatten(node.children, depth + 1),
            ]);
        const shown = flatten(nodes, 0);
        const text = JSON.stringify(shown);
        if (text !== this.lastLoggedTree) {
            this.lastLoggedTree = text;
            writeTestLog("sessionsView", { nodes: shown });
        }
    }

    /** The view's title and item commands; each gets the node it was invoked on. */
    registerCommands(): vscode.Disposable[] {
        const ids = sessionsViewCommandIds;
        const register = <N extends SessionsTreeNode>(id: string, handler: (node: N) => unknown) =>
            vscode.commands.registerCommand(id, (node?: N) => (node === undefined ? undefined : handler(node)));
        return [
            vscode.commands.registerCommand(ids.refresh, () => this.refresh()),
            register<SessionNode>(ids.reattach, (node) => this.reattach(node)),
            register<SessionNode>(ids.disconnectKeep, (node) => this.disconnectOwn(node, true)),
            register<SessionNode>(ids.disconnectRemove, (node) => this.disconnectOwn(node, false)),
            register<SessionNode>(ids.remove, (node) => this.remove(node)),
            register<RunNode>(ids.cancelRun, (node) => this.ctx.request(protocol.cancel, { runId: node.run.runId })),
            register<RunNode>(ids.showRunOutput, (node) => this.showRunOutput(node)),
            register<SessionsTreeNode>(ids.openPreview, (node) => (node.kind === "preview" ? this.ctx.openPreviewUrl(node.url) : undefined)),
            register<SessionsTreeNode>(ids.allowSecret, (node) => (node.kind === "heldBack" ? allowHeldBack(this.ctx, node.sessionId, node.path) : undefined)),
            // A session held here (the flag that offers Disconnect) can take a terminal.
            register<SessionNode>(ids.openTerminal, (node) => createSandboxTerminal(this.ctx, node.session).show()),
        ];
    }

    private async reattach(node: SessionNode): Promise<void> {
        if (this.ctx.liveSession !== undefined) {
            void vscode.window.showInformationMessage("sandlink: this window is connected already; disconnect first to re-attach another sandbox.");
            return;
        }
        await connectWith(this.ctx, { reuse: node.session.sessionId });
        await this.refresh();
    }

    /** Disconnect of the window's own session goes through the palette command, which also resets the window's state. */
    private async disconnectOwn(node: SessionNode, keep: boolean): Promise<void> {
        if (this.ctx.currentSession?.sessionId !== node.session.sessionId) {
            return;
        }
        await vscode.commands.executeCommand(commandIds.disconnect, { keep });
    }

    /** Removes a kept sandbox: the server re-attaches it, ends its runs and deletes it. */
    private async remove(node: SessionNode): Promise<void> {
        const session = node.session;
        const choice = await vscode.window.showWarningMessage(
            `Remove the sandbox ${session.sessionId}?`,
            { modal: true, detail: `Its ${session.driver} sandbox, its files there and anything still running in it are deleted. Your workspace is not touched.` },
            "Remove",
        );
        if (choice !== "Remove") {
            return;
        }
        const removed = await vscode.window.withProgress(
            { location: vscode.ProgressLocation.Notification, title: `sandlink: removing ${session.sessionId}…` },
            () => this.ctx.request(protocol.disconnect, { sessionId: session.sessionId, keep: false }),
        );
        if (removed !== undefined) {
            writeTestLog("sessionRemoved", { sessionId: session.sessionId });
        }
        await this.refresh();
    }

    /** A finished run's full log opens as a document; a running one (or one without a log) shows the runs channel. */
    private async showRunOutput(node: RunNode): Promise<void> {
        const logPath = node.run.exit?.logPath;
        if (logPath !== undefined && fs.existsSync(logPath)) {
            try {
                await vscode.window.showTextDocument(vscode.Uri.file(logPath), { preview: true });
                return;
            } catch (error) {
                this.ctx.logChannel.warn(`The run's log ${logPath} could not be opened: ${describeError(error)}`);
            }
        }
        this.ctx.runsChannel.show(true);
    }

    dispose(): void {
        for (const disposable of this.disposables) {
            disposable.dispose();
        }
    }
}
