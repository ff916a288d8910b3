//! The profile form's logic without VS Code: which lines a driver's settings show, and how typed text becomes a value.

import type { SettingInfo } from "./protocol";

/** One line of the form: a setting with its value, or what saving would do. */
export interface FormLine {
    setting: SettingInfo;
    label: string;
    description: string;
    detail: string;
}

/** The form's lines: settings asked at connect first, then those given, then the rest, each in the driver's order. */
export function formLines(settings: readonly SettingInfo[], values: Readonly<Record<string, unknown>>): FormLine[] {
    const rank = (setting: SettingInfo) => (setting.askAtConnect ? 0 : setting.name in values ? 1 : 2);
    return [...settings]
        .map((setting, index) => ({ setting, index }))
        .sort((left, right) => rank(left.setting) - rank(right.setting) || left.index - right.index)
        .map(({ setting }) => ({
            setting,
            label: setting.name,
            description:
                setting.name in values
                    ? `= ${showValue(values[setting.name])}`
                    : setting.default !== undefined
                      ? `default ${showValue(setting.default)}`
                      : setting.askAtConnect
                        ? "needed to connect"
                        : "not set",
            detail: `${setting.description} (${setting.type})`,
        }));
}

/** A value as the form shows it: strings bare, everything else as JSON. */
export function showValue(value: unknown): string {
    return typeof value === "string" ? value : JSON.stringify(value);
}

/** What the user typed, read as the setting's type: the value, `undefined` to unset it (empty text), or an error sentence. */
export function parseSettingInput(type: string, text: string): { value?: unknown; error?: string } {
    const trimmed = text.trim();
    if (trimmed === "") {
        return {};
    }
    switch (type) {
        case "string":
            return { value: trimmed };
        case "integer": {
            return /^-?\d+$/.test(trimmed) ? { value: Number(trimmed) } : { error: "A whole number, like 4" };
        }
        case "number": {
            const value = Number(trimmed);
            return Number.isFinite(value) ? { value } : { error: "A number, like 0.5 or 2" };
        }
        case "numberOrString": {
            const value = Number(trimmed);
            return { value: Number.isFinite(value) && /^-?[\d.]+$/.test(trimmed) ? value : trimmed };
        }
        case "boolean":
            return trimmed === "true" || trimmed === "false" ? { value: trimmed === "true" } : { error: "true or false" };
        case "stringList":
            return { value: splitList(trimmed) };
        case "integerList": {
            const items = splitList(trimmed);
            return items.every((item) => /^\d+$/.test(item)) ? { value: items.map(Number) } : { error: "Whole numbers separated by commas, like 3000, 8080" };
        }
        case "network":
            return trimmed === "on" || trimmed === "off" ? { value: trimmed } : { value: splitList(trimmed) };
        default:
            // Tables and maps: JSON objects, as the profile file would hold them.
            return parseJsonObject(trimmed);
    }
}

/** The text the input box starts with for a value already set. */
export function inputText(type: string, value: unknown): string {
    if (value === undefined) {
        return "";
    }
    if (Array.isArray(value) && (type === "stringList" || type === "integerList" || type === "network")) {
        return value.map(String).join(", ");
    }
    return showValue(value);
}

/** The hint under the input box for a type. */
export function inputPrompt(setting: SettingInfo): string {
    const forms: Record<string, string> = {
        stringList: "values separated by commas",
        integerList: "whole numbers separated by commas",
        network: "on, off, or host names separated by commas",
        stringMap: 'a JSON object of strings, like {"NODE_ENV": "test"}',
        table: "a JSON object",
        boolean: "true or false",
    };
    const form = forms[setting.type] ?? setting.type;
    return `${setting.name}: ${setting.description} (${form}; empty to unset)`;
}

function splitList(text: string): string[] {
    return text
        .split(",")
        .map((item) => item.trim())
        .filter((item) => item !== "");
}

function parseJsonObject(text: string): { value?: unknown; error?: string } {
    try {
        const parsed: unknown = JSON.parse(text);
        return typeof parsed === "object" && parsed !== null && !Array.isArray(parsed) ? { value: parsed } : { error: "A JSON object, like {\"KEY\": \"value\"}" };
    } catch {
        return { error: "A JSON object, like {\"KEY\": \"value\"}" };
    }
}
