//! Agent task commands: "Start Task" (a repository cloned into a new sandbox on the branch task-ID) and "Open Pull
//! Request" (push, then open or find the task's pull request and offer to open its URL). See docs/tasks.md.

import * as vscode from "vscode";

import type { Ctx } from "./ctx";
import * as protocol from "./protocol";

type Cmd = (...args: unknown[]) => unknown;

/** The task started last in this window, offered first by Open Pull Request. */
const lastTaskKey = "sandlink.lastAgentTask";

export function startTask(ctx: Ctx): Cmd {
    return async () => {
        const repo = await vscode.window.showInputBox({
            prompt: "Repository URL to clone into a new sandbox (empty: this workspace's repository, uncommitted changes included)",
            placeHolder: "https://github.com/OWNER/REPO.git",
            ignoreFocusOut: true,
        });
        if (repo === undefined) {
            return;
        }
        const workspaceFolder = vscode.workspace.workspaceFolders?.[0]?.uri.toString();
        const taskId = await vscode.window.showInputBox({
            prompt: "Task id (the branch will be task-ID)",
            validateInput: (value) => (/^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$/.test(value) ? undefined : "Letters, digits, '-', '_' or '.', up to 64."),
            ignoreFocusOut: true,
        });
        if (taskId === undefined) {
            return;
        }
        const title = await vscode.window.showInputBox({ prompt: "Title (the pull request's default title; optional)" });
        const profile = ctx.currentConfig.defaultProfile || undefined;
        const task = await vscode.window.withProgress(
            { location: vscode.ProgressLocation.Notification, title: `sandlink: starting task ${taskId}…` },
            () =>
                ctx.request(protocol.taskStart, {
                    repo: repo.trim() || undefined,
                    workspaceFolder: repo.trim() ? undefined : workspaceFolder,
                    taskId,
                    title: title?.trim() || undefined,
                    profile,
                }),
        );
        if (task === undefined) {
            return;
        }
        await ctx.extensionContext.workspaceState.update(lastTaskKey, task.taskId);
        void vscode.window.showInformationMessage(
            `sandlink: task ${task.taskId} is ready on ${task.branch} (session ${task.sessionId ?? "none"}).`,
        );
    };
}

export function openPullRequest(ctx: Ctx): Cmd {
    return async () => {
        const listing = await ctx.request(protocol.taskList, {});
        const open = (listing?.tasks ?? []).filter((task) => task.state === "running" || task.state === "pushed");
        if (open.length === 0) {
            void vscode.window.showInformationMessage("sandlink: no task is running. Start one with Sandlink: Start Task.");
            return;
        }
        const last = ctx.extensionContext.workspaceState.get<string>(lastTaskKey);
        open.sort((left, right) => Number(right.taskId === last) - Number(left.taskId === last));
        const picked = await vscode.window.showQuickPick(
            open.map((task) => ({ label: task.taskId, description: `${task.branch} · ${task.commits.length} commit(s)`, task })),
            { placeHolder: "The task whose pull request to open" },
        );
        if (picked === undefined) {
            return;
        }
        const taskId = picked.task.taskId;
        const opened = await vscode.window.withProgress(
            { location: vscode.ProgressLocation.Notification, title: `sandlink: pushing ${picked.task.branch} and opening its pull request…` },
            async () => {
                const pushed = await ctx.request(protocol.taskPush, { taskId });
                return pushed === undefined ? undefined : ctx.request(protocol.taskPr, { taskId });
            },
        );
        if (opened?.prUrl === undefined) {
            return;
        }
        const choice = await vscode.window.showInformationMessage(`sandlink: pull request #${opened.prNumber ?? ""} for task ${taskId}.`, "Open");
        if (choice === "Open") {
            void vscode.env.openExternal(vscode.Uri.parse(opened.prUrl));
        }
    };
}
