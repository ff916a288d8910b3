//! First use in VS Code: a connect flow that asks for what a driver cannot do without (offering the server's choices),
//! the profile form generated from a driver's settings, and uploading a held-back file the user chose to allow.

import * as vscode from "vscode";

import { errorKind, type Ctx } from "./ctx";
import * as protocol from "./protocol";
import { formLines, inputPrompt, inputText, parseSettingInput, showValue } from "./settings_form";
import { commandIds } from "./status";
import { writeTestLog } from "./test_log";

/** A value chosen for a setting; `value` undefined means "unset it". */
interface Chosen {
    value?: unknown;
}

/**
 * The settings a connect with `driver`'s defaults cannot do without (docker's image), asked one by one with the
 * server's suggestions (the workspace's dev container image, local images). Undefined when the user backed out.
 */
export async function askConnectSettings(
    ctx: Ctx,
    driver: protocol.DriverInfo,
    workspaceFolder: string | undefined,
): Promise<Record<string, unknown> | undefined> {
    const settings: Record<string, unknown> = {};
    for (const setting of driver.settings ?? []) {
        if (!setting.askAtConnect) {
            continue;
        }
        const chosen = await chooseValue(ctx, driver.id, setting, undefined, workspaceFolder);
        if (chosen?.value === undefined) {
            return undefined;
        }
        settings[setting.name] = chosen.value;
    }
    return settings;
}

/** The profile form: every setting of the driver with its value; pick one to change it, or Save. */
export async function editSettingsForm(
    ctx: Ctx,
    driver: protocol.DriverInfo,
    initial: Readonly<Record<string, unknown>>,
    workspaceFolder: string | undefined,
): Promise<Record<string, unknown> | undefined> {
    const values: Record<string, unknown> = { ...initial };
    for (;;) {
        const given = Object.keys(values);
        const save = { label: "$(check) Save", description: given.length > 0 ? given.join(", ") : "the driver's defaults", save: true as const };
        const lines = formLines(driver.settings ?? [], values).map((line) => ({
            label: line.label,
            description: line.description,
            detail: line.detail,
            setting: line.setting,
        }));
        writeTestLog("profileFormShown", { driver: driver.id, settings: lines.map((line) => line.label), values });
        const picked = await vscode.window.showQuickPick([save, ...lines], {
            placeHolder: `Settings of the ${driver.id} profile: pick one to change it, or Save`,
            ignoreFocusOut: true,
            matchOnDetail: true,
        });
        if (picked === undefined) {
            return undefined;
        }
        if ("save" in picked) {
            const missing = (driver.settings ?? []).filter((setting) => setting.askAtConnect && !(setting.name in values));
            if (missing.length > 0) {
                const names = missing.map((setting) => setting.name).join(", ");
                const answer = await vscode.window.showWarningMessage(
                    `A ${driver.id} profile without ${names} cannot connect; you will be asked for it at each connect.`,
                    { modal: true },
                    "Save Anyway",
                );
                if (answer !== "Save Anyway") {
                    continue;
                }
            }
            return values;
        }
        const chosen = await chooseValue(ctx, driver.id, picked.setting, values[picked.setting.name], workspaceFolder);
        if (chosen === undefined) {
            continue;
        }
        if (chosen.value === undefined) {
            delete values[picked.setting.name];
        } else {
            values[picked.setting.name] = chosen.value;
        }
    }
}

/** One setting's value: picked from the server's choices or typed; undefined when the user backed out. */
async function chooseValue(
    ctx: Ctx,
    driverId: string,
    setting: protocol.SettingInfo,
    current: unknown,
    workspaceFolder: string | undefined,
): Promise<Chosen | undefined> {
    if (setting.type === "boolean") {
        const picked = await vscode.window.showQuickPick(
            [
                { label: "true", value: true as unknown },
                { label: "false", value: false as unknown },
                { label: "$(discard) Unset", description: setting.default !== undefined ? `default ${showValue(setting.default)}` : undefined, value: undefined },
            ],
            { placeHolder: `${setting.name}: ${setting.description}` },
        );
        return picked === undefined ? undefined : { value: picked.value };
    }
    const offered = (await ctx.requestQuietly(protocol.settingChoices, { driver: driverId, setting: setting.name, workspaceFolder }))?.choices ?? [];
    if (offered.length > 0) {
        writeTestLog("settingChoicesOffered", { driver: driverId, setting: setting.name, values: offered.map((choice) => choice.value) });
        const typeOwn = { label: "$(edit) Type a value…", typed: true as const };
        const picked = await vscode.window.showQuickPick(
            [
                ...offered.map((choice) => ({ label: choice.label ?? showValue(choice.value), detail: choice.detail, value: choice.value })),
                typeOwn,
            ],
            { placeHolder: `${setting.name} for ${driverId}: ${setting.description}`, ignoreFocusOut: true, matchOnDetail: true },
        );
        if (picked === undefined) {
            return undefined;
        }
        if (!("typed" in picked)) {
            return { value: picked.value };
        }
    }
    const text = await vscode.window.showInputBox({
        prompt: inputPrompt(setting),
        value: inputText(setting.type, current),
        ignoreFocusOut: true,
        validateInput: (typed) => parseSettingInput(setting.type, typed).error,
    });
    return text === undefined ? undefined : { value: parseSettingInput(setting.type, text).value };
}

/**
 * A driver connected without a profile that lacks a required key (`credentialsMissing`): offers to keep the key in the
 * system keychain under a profile named after the driver (made with the settings just used), and answers the connect
 * to retry with that profile. Undefined when the user declined or the key could not be stored; where there is no
 * keychain the server's refusal names the environment variable to set instead.
 */
export async function offerToStoreMissingKey(
    ctx: Ctx,
    params: Omit<protocol.ConnectParams, "workspaceFolder">,
    error: unknown,
): Promise<Omit<protocol.ConnectParams, "workspaceFolder"> | undefined> {
    if (errorKind(error) !== "credentialsMissing" || params.driver === undefined || params.profile !== undefined) {
        return undefined;
    }
    const drivers = (await ctx.requestQuietly(protocol.drivers, {}))?.drivers ?? ctx.knownDrivers;
    const driver = drivers.find((candidate) => candidate.id === params.driver);
    const missing = (driver?.credentials ?? []).filter((credential) => credential.required);
    if (driver === undefined || missing.length === 0) {
        return undefined;
    }
    const profileName = driver.id;
    const existing = (await ctx.requestQuietly(protocol.profiles, {}))?.profiles.find((profile) => profile.name === profileName);
    if (existing !== undefined && existing.driver !== driver.id) {
        return undefined;
    }
    const store = "Store the Key…";
    writeTestLog("missingKeyOffered", { driver: driver.id, keys: missing.map((credential) => credential.key) });
    const choice = await vscode.window.showWarningMessage(
        `sandlink: the ${driver.id} driver needs ${missing.map((credential) => credential.description).join(" and ")}. ` +
            `Store it in the system keychain (as profile "${profileName}"), or set ${missing.map((credential) => credential.envVar).join(", ")} ` +
            "in the environment the editor starts sandlink with.",
        store,
    );
    if (choice !== store) {
        return undefined;
    }
    if (existing === undefined) {
        const saved = await ctx.request(protocol.saveProfile, { name: profileName, driver: driver.id, settings: params.settings ?? {} });
        if (saved === undefined) {
            return undefined;
        }
    }
    for (const credential of missing) {
        // password: true hides the typed value; it goes straight to the keychain request.
        const value = await vscode.window.showInputBox({
            prompt: `${credential.description} for the ${driver.id} driver (kept in the system keychain; ${credential.envVar} wins over it)`,
            password: true,
            ignoreFocusOut: true,
        });
        if (value === undefined || value === "") {
            return undefined;
        }
        if (!(await ctx.setCredential(profileName, credential.key, value))) {
            return undefined;
        }
        writeTestLog("credentialStored", { profile: profileName, key: credential.key });
    }
    return { profile: profileName };
}

/** Sessions whose held-back files were already announced in this window, so a re-attach does not repeat it. */
const announced = new Set<string>();

/** Says at connect which files stayed on this machine because they look like secrets, with a way to allow one. */
export async function announceHeldBack(ctx: Ctx, session: protocol.SessionInfo): Promise<void> {
    const files = session.sync.heldBack ?? (session.sync.heldBackSecrets ?? []).map((path) => ({ path, rule: "secret-file-name" }));
    if (files.length === 0 || announced.has(session.sessionId)) {
        return;
    }
    announced.add(session.sessionId);
    writeTestLog("heldBackAnnounced", { sessionId: session.sessionId, paths: files.map((file) => file.path) });
    const shown = files.slice(0, 3).map((file) => file.path).join(", ") + (files.length > 3 ? ` and ${files.length - 3} more` : "");
    const subject = files.length === 1 ? "a file that looks" : `${files.length} files that look`;
    const choice = await vscode.window.showWarningMessage(
        `sandlink kept ${subject} like secrets on this machine: ${shown}. Commands in the sandbox do not see ${files.length === 1 ? "it" : "them"}.`,
        "Allow One…",
        "Show in Sessions",
    );
    if (choice === "Allow One…") {
        await allowHeldBack(ctx, session.sessionId, undefined);
    } else if (choice === "Show in Sessions") {
        await vscode.commands.executeCommand(commandIds.showSessions);
    }
}

/** Uploads one held-back file after the user picked it and said for how long: this session, or the profile too. */
export async function allowHeldBack(ctx: Ctx, sessionId: string, path: string | undefined): Promise<void> {
    const session = ctx.liveSession;
    if (session === undefined || session.sessionId !== sessionId) {
        void vscode.window.showInformationMessage("sandlink: connect to that session in this window to upload its held-back files.");
        return;
    }
    const files = session.sync.heldBack ?? (session.sync.heldBackSecrets ?? []).map((held) => ({ path: held, rule: "secret-file-name" }));
    let target = files.find((file) => file.path === path);
    if (target === undefined) {
        const picked = await vscode.window.showQuickPick(
            files.map((file) => ({ label: file.path, description: file.rule, file })),
            { placeHolder: "Which held-back file should go to the sandbox?" },
        );
        if (picked === undefined) {
            return;
        }
        target = picked.file;
    }
    const scopes = [
        { label: "$(cloud-upload) Upload it for this session", remember: false },
        ...(session.profile !== undefined
            ? [{ label: `$(save) Upload it and allow it in profile ${session.profile}`, detail: "Adds it to the profile's sync.allowSecrets in your config.toml", remember: true }]
            : []),
    ];
    const scope = await vscode.window.showQuickPick(scopes, {
        placeHolder: `${target.path} looks like a secret (${target.rule}). Upload it to the ${session.driver} sandbox, where commands can read it?`,
        ignoreFocusOut: true,
    });
    if (scope === undefined) {
        return;
    }
    const result = await ctx.request(protocol.allowSecret, { sessionId, path: target.path, remember: scope.remember });
    if (result === undefined) {
        return;
    }
    writeTestLog("secretAllowed", { sessionId, path: target.path, remember: scope.remember, uploaded: result.uploaded });
    ctx.refreshView();
    void vscode.window.showInformationMessage(
        `sandlink: ${target.path} uploaded to the sandbox${scope.remember ? ` and allowed in profile ${session.profile}` : " for this session"}.`,
    );
}
