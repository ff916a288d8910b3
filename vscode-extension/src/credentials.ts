//! The choices Set Credential offers: the credential names the profile's driver declares (`DriverInfo.credentials`),
//! then a way to type another name.
//
// No `vscode` import, so it is unit-tested under plain Node (test/credentials.test.ts); commands.ts shows the result.

import type { DriverInfo } from "./protocol";

/** One row of the Set Credential pick list; `key` is absent on the row that asks for a typed name. */
export interface CredentialChoice {
    label: string;
    description?: string;
    detail?: string;
    key?: string;
}

/** The label of the row that asks for a name the driver does not declare. */
export const anotherNameLabel = "$(edit) Another name…";

/**
 * The rows for a profile of `driverId`: each credential the driver reads (its key, the environment variable that wins
 * over the keychain, whether it is required), then the typed-name row. Empty when the driver declares none (or is not
 * known), so the caller asks for a typed name as it always did.
 */
export function credentialChoices(drivers: readonly DriverInfo[], driverId: string | undefined): CredentialChoice[] {
    const credentials = drivers.find((driver) => driver.id === driverId)?.credentials ?? [];
    if (credentials.length === 0) {
        return [];
    }
    return [
        ...credentials.map((credential) => ({
            label: credential.key,
            description: `${credential.envVar}${credential.required ? ", required" : ""}`,
            detail: credential.description,
            key: credential.key,
        })),
        { label: anotherNameLabel, description: "a credential name the driver does not list" },
    ];
}
