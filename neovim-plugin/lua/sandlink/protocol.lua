-- Mirrors server/src/protocol.rs: the sandlink method and command names; tests/neovim checks they do not drift.

local protocol = {}

-- Requests from the client to the server (see ../shared/protocol.md, "Requests, client to server").
protocol.request = {
  drivers = 'sandlink/drivers',
  connect = 'sandlink/connect',
  disconnect = 'sandlink/disconnect',
  sessions = 'sandlink/sessions',
  status = 'sandlink/status',
  run = 'sandlink/run',
  input = 'sandlink/input',
  cancel = 'sandlink/cancel',
  cancel_job = 'sandlink/cancelJob',
  sync = 'sandlink/sync',
  preview = 'sandlink/preview',
  extend = 'sandlink/extend',
  snapshot = 'sandlink/snapshot',
  restore = 'sandlink/restore',
  profiles = 'sandlink/profiles',
  save_profile = 'sandlink/saveProfile',
  delete_profile = 'sandlink/deleteProfile',
  set_credential = 'sandlink/setCredential',
  delete_credential = 'sandlink/deleteCredential',
  trust_workspace = 'sandlink/trustWorkspace',
  tasks = 'sandlink/tasks',
  resolve = 'sandlink/resolve',
  runs = 'sandlink/runs',
  accept_host_key = 'sandlink/acceptHostKey',
  allow_secret = 'sandlink/allowSecret',
  setting_choices = 'sandlink/settingChoices',
  keepalive = 'sandlink/keepalive',
  resize = 'sandlink/resize',
  attach = 'sandlink/attach',
  -- Agent tasks: a repository cloned into a new sandbox on the branch task-{taskId} (see docs/tasks.md).
  task_start = 'sandlink/task/start',
  task_status = 'sandlink/task/status',
  task_commit = 'sandlink/task/commit',
  task_push = 'sandlink/task/push',
  task_pr = 'sandlink/task/pr',
  task_list = 'sandlink/task/list',
  task_end = 'sandlink/task/end',
}

-- Notifications from the server, sent only because the client announces experimental.sandlink.notifications.
protocol.notification = {
  output = 'sandlink/output',
  exit = 'sandlink/exit',
  session_state = 'sandlink/sessionState',
  sync_state = 'sandlink/syncState',
  preview_ready = 'sandlink/previewReady',
  timeout_warning = 'sandlink/timeoutWarning',
}

-- The workspace/executeCommand ids that plain LSP clients use. The server's code actions and code lens carry them; the
-- plugin runs them itself (commands.lsp_command_handlers) instead of sending them back.
protocol.command = {
  connect = 'sandlink.connect',
  disconnect = 'sandlink.disconnect',
  run = 'sandlink.run',
  cancel = 'sandlink.cancel',
  sync = 'sandlink.sync',
  preview = 'sandlink.preview',
  status = 'sandlink.status',
  extend = 'sandlink.extend',
}

-- `error.data.kind` values the plugin reacts to (see docs/protocol.md, "Errors"). A `workspaceNotTrusted` error also
-- carries `data.fingerprint`, the file as its message describes it; `trust_workspace` takes it back as
-- `{ workspaceFolder, trust, fingerprint }` so that only what the user was shown is trusted.
protocol.error_kind = {
  workspace_not_trusted = 'workspaceNotTrusted',
  cancelled = 'cancelled',
  limit_reached = 'limitReached',
  -- Both carry `data.host` and `data.fingerprint`; `accept_host_key` takes them back once the user checked it.
  host_key_unknown = 'hostKeyUnknown',
  host_key_changed = 'hostKeyChanged',
  -- An agent task's push could not be rebased onto its moved base; `data.files` names the files.
  conflict = 'conflict',
}

-- The fields of the shapes the plugin reads from the server, on the wire (see docs/protocol.md, "Shapes");
-- tests/neovim checks them against the structs of the same names in protocol.rs.
---@class sandlink.SettingInfo
---@field name string
---@field type string `string`, `integer`, `number`, `boolean`, `stringList`, `integerList`, `stringMap`, `table`, `numberOrString` or `network`
---@field default any|nil what the driver uses when the setting is absent
---@field description string
---@field askAtConnect boolean|nil a connect with the driver's defaults cannot do without it (docker's `image`)
---@class sandlink.CredentialInfo
---@field key string the `key` of sandlink/setCredential (`apiKey`)
---@field envVar string the environment variable that wins over the keychain (`E2B_API_KEY`)
---@field required boolean
---@field description string
---@class sandlink.DriverInfo
---@field id string
---@field available boolean
---@field detail string|nil
---@field capabilities table<string, boolean>
---@field settings sandlink.SettingInfo[] the driver's profile settings: its own, then `sync` and `network`
---@field credentials sandlink.CredentialInfo[] the credentials the driver reads
---@class sandlink.JobInfo
---@field jobId string what sandlink/cancelJob takes
---@field kind string `connect`, `sync`, `snapshot` or `restore`
---@field title string
---@field startedAt string
---@field percentage number|nil how far the job is, when it knows
protocol.shape_fields = {
  JobInfo = { 'jobId', 'kind', 'title', 'startedAt', 'percentage' },
  DriverInfo = { 'id', 'available', 'detail', 'capabilities', 'settings', 'credentials' },
  SettingInfo = { 'name', 'type', 'default', 'description', 'askAtConnect' },
  CredentialInfo = { 'key', 'envVar', 'required', 'description' },
}

-- The client capability that makes the server send the notifications above instead of window/logMessage.
function protocol.client_capability()
  return { notifications = true }
end

return protocol
