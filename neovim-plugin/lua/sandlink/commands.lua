-- The actions behind `:Sandlink <subcommand>`: one function per subcommand, plus argument completion.

local client = require('sandlink.client')
local config = require('sandlink.config')
local first_use = require('sandlink.first_use')
local protocol = require('sandlink.protocol')
local sessions = require('sandlink.sessions')
local state = require('sandlink.state')

local commands = {}

local function notify(message, level)
  vim.notify('sandlink: ' .. message, level or vim.log.levels.INFO)
end

local function notify_error(what, err)
  notify(what .. ': ' .. client.describe_error(err), vim.log.levels.ERROR)
end

local function finish(on_done, err, result)
  if type(on_done) == 'function' then
    on_done(err, result)
  end
end

-- The workspace commands act on: the one given (a code action's client), else the current one; nil (with a message)
-- when setup() has not started one.
local function require_workspace(given)
  local workspace = given or state.current_workspace()
  if workspace == nil then
    notify('not set up yet: call require("sandlink").setup() first', vim.log.levels.ERROR)
  end
  return workspace
end

local function not_connected_error()
  return { message = 'not connected to a sandbox: :Sandlink connect starts one', data = { kind = 'notConnected' } }
end

-- The workspace's .sandlink.toml tasks as name -> command line, from the server's `sandlink/tasks` answer that
-- refresh_tasks keeps (the server owns the file; the plugin has no TOML reader of its own).
function commands.read_tasks(workspace)
  local tasks = {}
  for _, task in ipairs(workspace and workspace.tasks or {}) do
    tasks[task.name] = task.command
  end
  return tasks
end

-- Asks the server for the workspace's tasks again (at start and whenever .sandlink.toml is written).
function commands.refresh_tasks(workspace, on_done)
  client.request(workspace, protocol.request.tasks, { workspaceFolder = workspace.root_dir }, function(err, result)
    if not err and type(result) == 'table' then
      workspace.tasks = result.tasks or {}
      if result.error then
        notify('the tasks of .sandlink.toml could not be read: ' .. tostring(result.error), vim.log.levels.WARN)
      end
    end
    finish(on_done, err, workspace.tasks)
  end)
end

-- The most characters of a command a title shows, as the server's task titles (tasks.rs TITLE_COMMAND_CHARS).
commands.title_command_chars = 60

-- Unicode's White_Space code points, which the server's `split_whitespace` collapses: a repository could pad a task
-- with a no-break or an ideographic space as well as with ASCII blanks.
local function is_white_space(code_point)
  return (code_point >= 0x09 and code_point <= 0x0D) or code_point == 0x20 or code_point == 0x85
    or code_point == 0xA0 or code_point == 0x1680 or (code_point >= 0x2000 and code_point <= 0x200A)
    or code_point == 0x2028 or code_point == 0x2029 or code_point == 0x202F or code_point == 0x205F
    or code_point == 0x3000
end

local function code_point_of(character)
  local first = character:byte(1)
  if first < 0x80 or #character == 1 then
    return first
  end
  local value = first % (first >= 0xF0 and 0x08 or first >= 0xE0 and 0x10 or 0x20)
  for index = 2, #character do
    value = value * 0x40 + character:byte(index) % 0x40
  end
  return value
end

-- A command as a one-line title shows it, the way the server's task titles do (tasks.rs `shown_command`): every run
-- of whitespace is one space, and a command longer than 60 characters is cut with an ellipsis, so padding cannot push
-- part of a command (`; curl …`) out of sight.
function commands.shown_command(command)
  local words, word = {}, {}
  for character in tostring(command):gmatch('[%z\1-\127\192-\255][\128-\191]*') do
    if is_white_space(code_point_of(character)) then
      if #word > 0 then
        table.insert(words, word)
        word = {}
      end
    else
      table.insert(word, character)
    end
  end
  if #word > 0 then
    table.insert(words, word)
  end
  local characters = {}
  for index, each in ipairs(words) do
    if index > 1 then
      table.insert(characters, ' ')
    end
    vim.list_extend(characters, each)
  end
  if #characters <= commands.title_command_chars then
    return table.concat(characters)
  end
  local cut = table.concat(characters, '', 1, commands.title_command_chars - 1)
  return (cut:gsub('%s+$', '')) .. '…'
end

-- Whether err is the server's `workspaceNotTrusted` refusal (which then carries the message to show and
-- data.fingerprint).
local function is_trust_refusal(err)
  return type(err) == 'table' and type(err.data) == 'table' and err.data.kind == protocol.error_kind.workspace_not_trusted
end

-- Puts a `workspaceNotTrusted` refusal to the user with vim.ui.select, as the plugin asks elsewhere; only
-- "Trust workspace" sends sandlink/trustWorkspace, bound to the fingerprint of the file the message describes.
-- on_answer(err, trusted): trusted is true once the server has recorded the trust.
function commands.ask_to_trust(workspace, refusal, on_answer)
  local fingerprint = type(refusal.data) == 'table' and refusal.data.fingerprint or nil
  local choices = { 'Trust workspace', 'Do not trust it' }
  vim.ui.select(choices, {
    prompt = 'sandlink: ' .. tostring(refusal.message) .. '\nTrust this workspace?',
    kind = 'sandlink.trust',
  }, function(choice)
    if choice ~= choices[1] then
      return on_answer(nil, false)
    end
    local params = { workspaceFolder = vim.uri_from_fname(workspace.root_dir), trust = true, fingerprint = fingerprint }
    client.request(workspace, protocol.request.trust_workspace, params, function(err)
      if err then
        return on_answer(err, false)
      end
      notify('trusted ' .. workspace.root_dir .. ' as its .sandlink.toml was shown')
      on_answer(nil, true)
    end)
  end)
end

-- Whether err is an ssh host-key refusal (`hostKeyUnknown`/`hostKeyChanged`, with data.host and data.fingerprint).
local function is_host_key_refusal(err)
  return type(err) == 'table' and type(err.data) == 'table' and type(err.data.fingerprint) == 'string'
    and (err.data.kind == protocol.error_kind.host_key_unknown or err.data.kind == protocol.error_kind.host_key_changed)
end

-- Puts a host-key refusal to the user; only "Accept host key" sends sandlink/acceptHostKey, which records the key only
-- if the host still presents the fingerprint shown. on_answer(err, accepted).
function commands.ask_to_accept_host_key(workspace, refusal, config_file, on_answer)
  local choices = { 'Accept host key', 'Do not accept it' }
  vim.ui.select(choices, {
    prompt = 'sandlink: ' .. tostring(refusal.message) .. '\nAccept ' .. refusal.data.fingerprint .. '?',
    kind = 'sandlink.host_key',
  }, function(choice)
    if choice ~= choices[1] then
      return on_answer(nil, false)
    end
    local params = { host = refusal.data.host, fingerprint = refusal.data.fingerprint, configFile = config_file }
    client.request(workspace, protocol.request.accept_host_key, params, function(err, result)
      if err then
        return on_answer(err, false)
      end
      notify('recorded the host key of ' .. tostring(refusal.data.host) .. ' in ' .. tostring(result and result.knownHosts))
      on_answer(nil, true)
    end)
  end)
end

-- Connects the workspace. A profile that would send the workspace elsewhere or loosen the sandbox is refused with
-- `workspaceNotTrusted` until the workspace is trusted: the server's message (where code and which credential would
-- go) is put to the user (commands.ask_to_trust), and only "Trust workspace" trusts it and connects, once more.
-- options: profile, driver, reuse, sync, settings, and workspace (default: the current one).
function commands.connect(options, on_done)
  options = options or {}
  local workspace = require_workspace(options.workspace)
  if workspace == nil then
    return finish(on_done, { message = 'not set up' })
  end
  if workspace.session then
    notify('already connected (session ' .. tostring(workspace.session.sessionId) .. '); :Sandlink disconnect first')
    return finish(on_done, nil, workspace.session)
  end
  if workspace.connecting then
    -- A second connect (or a run that needs a session) waits for the one under way instead of starting another.
    table.insert(workspace.connect_waiters, on_done or function() end)
    return
  end
  workspace.connect_waiters = {}
  local function finish_all(err, session)
    local waiters = workspace.connect_waiters
    workspace.connect_waiters = {}
    finish(on_done, err, session)
    for _, waiter in ipairs(waiters) do
      waiter(err, session)
    end
  end
  local params = {
    workspaceFolder = vim.uri_from_fname(workspace.root_dir),
    sync = options.sync,
    reuse = options.reuse,
  }
  if params.sync == nil then
    params.sync = config.options.sync_on_connect
  end
  -- An explicit profile or driver wins; the configured defaults apply only when neither is given. A re-attach keeps
  -- the session's own driver, profile and settings (the server refuses others), so it sends none.
  if options.reuse then
    params.profile, params.driver = nil, nil
  elseif options.profile or options.driver then
    params.profile, params.driver = options.profile, options.driver
  else
    params.profile, params.driver = config.options.profile, config.options.driver
  end
  if not options.reuse then
    params.settings = options.settings or config.options.settings
  end
  workspace.connecting = true
  state.announce_change()
  local function connected(session)
    workspace.connecting = false
    workspace.session = session
    state.announce_change()
    notify('connected: ' .. tostring(session.profile or session.driver) .. ' session ' .. tostring(session.sessionId)
      .. (session.remoteRoot and (' at ' .. tostring(session.remoteRoot)) or ''))
    local held_back = first_use.held_back_notice(session)
    if held_back then
      notify(held_back, vim.log.levels.WARN)
    end
    commands.refresh_known_sessions(workspace)
    finish_all(nil, session)
  end
  local function not_connected(err, what)
    workspace.connecting = false
    state.announce_change()
    if what then
      notify_error(what, err)
    end
    if type(err) == 'table' and type(err.data) == 'table' and err.data.kind == protocol.error_kind.limit_reached then
      -- The limit counts kept sandboxes too, which are easy to forget; say where this editor lists and removes them.
      notify(':Sandlink sessions lists every sandbox and removes the ones you no longer need', vim.log.levels.WARN)
    end
    finish_all(err)
  end
  -- `connecting` stays set while the user reads the trust prompt, so a second connect waits for this one.
  local function request_connect(may_ask_for_trust)
    client.request(workspace, protocol.request.connect, params, function(err, session)
      if is_trust_refusal(err) and may_ask_for_trust then
        return commands.ask_to_trust(workspace, err, function(trust_err, trusted)
          if trust_err then
            return not_connected(trust_err, 'trusting the workspace failed')
          end
          if not trusted then
            notify('not connected: the workspace is not trusted, and you chose not to trust it')
            return not_connected(err)
          end
          -- Once more, and only once: a second refusal (the file changed again) is reported, not asked about.
          request_connect(false)
        end)
      end
      if is_host_key_refusal(err) and may_ask_for_trust then
        local config_file = type(params.settings) == 'table' and params.settings.configFile or nil
        return commands.ask_to_accept_host_key(workspace, err, config_file, function(accept_err, accepted)
          if accept_err then
            return not_connected(accept_err, 'accepting the host key failed')
          end
          if not accepted then
            return not_connected(err, 'not connected: the host key was not accepted')
          end
          request_connect(false)
        end)
      end
      if err and may_ask_for_trust and type(err.data) == 'table' and err.data.kind == 'credentialsMissing' and params.driver then
        -- A cloud driver without its key: offered to store it (once), then connected with the profile holding it.
        return first_use.offer_to_store_key(workspace, params, err, function(profile)
          if not profile then
            return not_connected(err, 'connecting failed')
          end
          params.profile, params.driver, params.settings = profile, nil, nil
          request_connect(false)
        end)
      end
      if err or type(session) ~= 'table' then
        return not_connected(err or { message = 'no session in the response' }, 'connecting failed')
      end
      connected(session)
    end)
  end
  -- A driver named without a profile or settings gets what it cannot connect without (docker: an image) asked for,
  -- offering the server's choices, rather than failing on its defaults.
  local asks = params.driver and not options.reuse and (params.settings == nil or vim.tbl_isempty(params.settings))
  if not asks then
    return request_connect(true)
  end
  first_use.ask_connect_settings(workspace, params.driver, function(settings, needed)
    if settings == nil then
      notify('not connected: the ' .. tostring(params.driver) .. ' driver needs ' .. tostring(needed)
        .. ' (give it in a profile, or in setup({ settings = { ... } }))', vim.log.levels.WARN)
      return not_connected({ message = 'the ' .. tostring(params.driver) .. ' driver needs ' .. tostring(needed) })
    end
    if not vim.tbl_isempty(settings) then
      params.settings = settings
    end
    request_connect(true)
  end)
end

function commands.disconnect(options, on_done)
  options = options or {}
  local workspace = require_workspace()
  if workspace == nil or workspace.session == nil then
    notify('not connected')
    return finish(on_done, nil, {})
  end
  local session_id = workspace.session.sessionId
  local conflicts = commands.conflicts(workspace)
  if not options.keep and not options.conflicts_answered and #conflicts > 0 then
    -- Removing the sandbox would discard its side of each conflict without the user having chosen.
    local take, discard = "Take the sandbox's versions, then disconnect", "Discard the sandbox's versions"
    return vim.ui.select({ take, discard }, {
      prompt = 'sandlink: ' .. #conflicts .. ' file(s) changed both here and in the sandbox ('
        .. conflicts[1].path .. (#conflicts > 1 and ', ...' or '') .. '); removing the sandbox discards its versions',
    }, function(answer)
      if answer == nil then
        return finish(on_done, { message = 'disconnect cancelled' })
      end
      local go_on = vim.tbl_extend('force', options, { conflicts_answered = true })
      if answer == discard then
        return commands.disconnect(go_on, on_done)
      end
      local remaining = #conflicts
      for _, conflict in ipairs(conflicts) do
        commands.resolve(conflict.path, 'sandbox', function(err)
          remaining = remaining - 1
          if err then
            remaining = -1
            return finish(on_done, err)
          end
          if remaining == 0 then
            commands.disconnect(go_on, on_done)
          end
        end)
      end
    end)
  end
  client.request(workspace, protocol.request.disconnect, { sessionId = session_id, keep = options.keep or nil },
    function(err, result)
      if err then
        notify_error('disconnecting failed', err)
        return finish(on_done, err)
      end
      if workspace.session and workspace.session.sessionId == session_id then
        workspace.session = nil
      end
      state.announce_change()
      -- A kept sandbox completes in `:Sandlink connect reuse=` from now on.
      commands.refresh_known_sessions(workspace)
      notify(options.keep and 'disconnected; the sandbox is kept for a later connect (:Sandlink sessions lists it)'
        or 'disconnected')
      finish(on_done, nil, result)
    end)
end

-- Starts a command line (or a task of .sandlink.toml) and streams its output into a new scratch buffer. A line that is
-- exactly a task's name runs that task by name: the server reads its command and runs it only in a trusted workspace,
-- and a refusal is put to the user (commands.ask_to_trust) before the task is tried once more. Anything else is a
-- command line the user typed, sent as it is.
-- options.task = true runs command_line as a task's name and never as a command line (a code action's task, whose name
-- this plugin's small [tasks] reader may not know); options.workspace picks the workspace (default: the current one).
function commands.run(command_line, options, on_done)
  options = options or {}
  local workspace = require_workspace(options.workspace)
  if workspace == nil then
    return finish(on_done, { message = 'not set up' })
  end
  if command_line == nil or vim.trim(command_line) == '' then
    notify('nothing to run: :Sandlink run <command line or task name>', vim.log.levels.WARN)
    return finish(on_done, { message = 'no command' })
  end
  command_line = vim.trim(command_line)

  if workspace.session == nil then
    -- Running without a session connects first with the configured defaults, as a user would expect.
    return commands.connect({ workspace = workspace }, function(err)
      if err then
        return finish(on_done, err)
      end
      commands.run(command_line, options, on_done)
    end)
  end

  local task_command = commands.read_tasks(workspace)[command_line]
  local task_name = (task_command or options.task) and command_line or nil
  -- The task's text is read here only to be shown, collapsed and cut as the server's task titles are.
  local shown = command_line
  if task_name then
    shown = 'task ' .. task_name .. (task_command and (': ' .. commands.shown_command(task_command)) or '')
  end

  local output = require('sandlink.output')
  local view = output.create(shown, workspace.root_dir)
  output.show(view)
  local params = {
    sessionId = workspace.session.sessionId,
    cwd = options.cwd,
    env = options.env,
    timeoutMs = options.timeoutMs or config.options.run_timeout_ms,
  }
  if task_name then
    params.task = task_name
  else
    params.command = command_line
  end

  local function started(result)
    local run = {
      run_id = result.runId,
      root_dir = workspace.root_dir,
      command = shown,
      task = task_name,
      view = view,
      finished = false,
      started_order = state.next_run_order(),
    }
    state.runs[result.runId] = run
    vim.b[view.buffer].sandlink_run_id = result.runId
    state.announce_change()
    require('sandlink.handlers').replay_held_messages(result.runId, workspace)
    finish(on_done, nil, run)
  end

  local function not_started(err)
    output.append_note(view, '[not started: ' .. client.describe_error(err) .. ']', 'SandlinkExitFailure')
    finish(on_done, err)
  end

  local function request_run(may_ask_for_trust)
    state.run_requests_in_flight = state.run_requests_in_flight + 1
    client.request(workspace, protocol.request.run, params, function(err, result)
      state.run_requests_in_flight = state.run_requests_in_flight - 1
      local refused_for_trust = task_name and is_trust_refusal(err)
      if refused_for_trust and may_ask_for_trust then
        return commands.ask_to_trust(workspace, err, function(trust_err, trusted)
          if trust_err then
            notify_error('trusting the workspace failed', trust_err)
            return not_started(trust_err)
          end
          if not trusted then
            output.append_note(view, '[not started: the workspace is not trusted, and you chose not to trust it]',
              'SandlinkExitFailure')
            return finish(on_done, err)
          end
          -- Once more, and only once: a second refusal (the file changed again) is reported, not asked about.
          request_run(false)
        end)
      end
      if err or type(result) ~= 'table' or result.runId == nil then
        if refused_for_trust then
          notify_error('the task did not run', err)
        end
        return not_started(err or { message = 'no runId in the response' })
      end
      started(result)
    end)
  end
  request_run(true)
  return view
end

-- :Sandlink quickfix: the current run's output (the output buffer in the window, else the workspace's newest run) into
-- the quickfix list, whatever its exit.
function commands.quickfix()
  local run = state.runs[vim.b.sandlink_run_id or '']
  if run == nil then
    local workspace = state.current_workspace()
    for _, candidate in pairs(state.runs) do
      local mine = workspace == nil or candidate.root_dir == workspace.root_dir
      local newer = run == nil or (candidate.started_order or 0) > (run.started_order or 0)
      if mine and not candidate.collect and newer then
        run = candidate
      end
    end
  end
  if run == nil then
    return notify('no run yet: :Sandlink run <command line or task> starts one')
  end
  local count = require('sandlink.quickfix').load(run)
  if count == nil then
    return notify('the output of `' .. tostring(run.command) .. '` is no longer kept', vim.log.levels.WARN)
  end
  notify('`' .. tostring(run.command) .. '`: ' .. count .. ' location' .. (count == 1 and '' or 's')
    .. ' in the quickfix list' .. (count > 0 and ' (:copen)' or ''))
  return count
end

-- The run to cancel: the one named, else the one whose output buffer is current, else the newest still running.
function commands.find_run_to_cancel(run_id)
  if run_id and run_id ~= '' then
    return state.runs[run_id] or { run_id = run_id }
  end
  local buffer_run_id = vim.b.sandlink_run_id
  if buffer_run_id and state.runs[buffer_run_id] and not state.runs[buffer_run_id].finished then
    return state.runs[buffer_run_id]
  end
  return state.running_runs(state.current_workspace())[1]
end

function commands.cancel(run_id, on_done)
  local workspace = require_workspace()
  if workspace == nil then
    return finish(on_done, { message = 'not set up' })
  end
  local run = commands.find_run_to_cancel(run_id)
  if run == nil then
    notify('no run to cancel')
    return finish(on_done, { message = 'no run' })
  end
  client.request(workspace, protocol.request.cancel, { runId = run.run_id }, function(err, result)
    if err then
      notify_error('cancelling failed', err)
      return finish(on_done, err)
    end
    finish(on_done, nil, result)
  end)
end

function commands.sync(direction, on_done)
  local workspace = require_workspace()
  if workspace == nil or workspace.session == nil then
    notify_error('sync', not_connected_error())
    return finish(on_done, not_connected_error())
  end
  local params = { sessionId = workspace.session.sessionId }
  if direction and direction ~= '' then
    params.direction = direction
  end
  client.request(workspace, protocol.request.sync, params, function(err, result)
    if err then
      notify_error('sync failed', err)
      return finish(on_done, err)
    end
    local summary = string.format('synced: %s uploaded, %s downloaded, %s deleted, %s bytes in %s ms',
      tostring(result.uploaded), tostring(result.downloaded), tostring(result.deleted), tostring(result.bytes),
      tostring(result.durationMs))
    local brought = commands.brought_items(workspace.root_dir, result)
    if #brought > 0 then
      -- What came from the sandbox, in the quickfix list, so each file is one :cnext away.
      vim.fn.setqflist({}, ' ', { title = 'sandlink: files from the sandbox', items = brought })
      summary = summary .. '; :copen lists the ' .. #brought .. ' file(s) that came'
    end
    local conflicts = result.conflicts or {}
    if #conflicts > 0 then
      summary = summary .. '; ' .. #conflicts .. ' conflicts, first: ' .. tostring(conflicts[1].path)
        .. ' (:Sandlink conflicts)'
      notify(summary, vim.log.levels.WARN)
    else
      notify(summary)
    end
    finish(on_done, nil, result)
  end)
end

-- Quickfix items for what a sync brought into the workspace (SyncResult.brought) and removed from it.
function commands.brought_items(root_dir, result)
  local items = {}
  for _, path in ipairs(result.brought or {}) do
    table.insert(items, { filename = root_dir .. '/' .. path, lnum = 1, text = 'from the sandbox' })
  end
  for _, path in ipairs(result.removedLocally or {}) do
    table.insert(items, { filename = root_dir .. '/' .. path, lnum = 1, text = 'removed, as in the sandbox', valid = 0 })
  end
  return items
end

-- Opens a URL: vim.ui.open where Neovim has it (0.10+), else shows it and copies it to the clipboard registers.
function commands.open_url(url)
  if vim.ui and type(vim.ui.open) == 'function' then
    local ok, _, open_error = pcall(vim.ui.open, url)
    if ok and open_error == nil then
      notify('opening ' .. url)
      return 'opened'
    end
  end
  vim.fn.setreg('"', url)
  local copied_to = 'register "'
  if vim.fn.has('clipboard') == 1 then
    pcall(vim.fn.setreg, '+', url)
    copied_to = 'the clipboard'
  end
  notify('preview: ' .. url .. ' (copied to ' .. copied_to .. ')')
  return 'copied'
end

function commands.preview(port, on_done)
  local workspace = require_workspace()
  if workspace == nil or workspace.session == nil then
    notify_error('preview', not_connected_error())
    return finish(on_done, not_connected_error())
  end
  port = tonumber(port)
  if port == nil then
    notify('which port? :Sandlink preview <port>', vim.log.levels.WARN)
    return finish(on_done, { message = 'no port' })
  end
  client.request(workspace, protocol.request.preview, { sessionId = workspace.session.sessionId, port = port },
    function(err, result)
      if err then
        notify_error('preview failed', err)
        return finish(on_done, err)
      end
      local how = commands.open_url(result.url)
      finish(on_done, nil, { url = result.url, how = how })
    end)
end

function commands.extend(seconds, on_done)
  local workspace = require_workspace()
  if workspace == nil or workspace.session == nil then
    notify_error('extend', not_connected_error())
    return finish(on_done, not_connected_error())
  end
  seconds = tonumber(seconds) or config.options.extend_seconds
  client.request(workspace, protocol.request.extend, { sessionId = workspace.session.sessionId, seconds = seconds },
    function(err, result)
      if err then
        notify_error('extending failed', err)
        return finish(on_done, err)
      end
      if workspace.session then
        workspace.session.expiresAt = result.expiresAt
      end
      state.announce_change()
      notify('the sandbox now expires at ' .. tostring(result.expiresAt))
      finish(on_done, nil, result)
    end)
end

-- A few lines a person can read: what the session is, where, until when, and what is running.
function commands.describe_session(session, workspace)
  local lines = {}
  local function add(label, value)
    if value ~= nil and value ~= vim.NIL and value ~= '' then
      table.insert(lines, label .. ': ' .. tostring(value))
    end
  end
  table.insert(lines, 'sandlink: session ' .. tostring(session.sessionId) .. ' is ' .. tostring(session.state))
  add('driver', session.driver)
  add('profile', session.profile)
  add('remote root', session.remoteRoot)
  add('isolation', session.isolation)
  add('started', session.startedAt)
  add('last activity', session.lastActivity)
  add('expires', session.expiresAt)
  if type(session.sync) == 'table' then
    add('sync', tostring(session.sync.pending or 0) .. ' pending'
      .. (session.sync.lastSyncAt and session.sync.lastSyncAt ~= vim.NIL and (', last at ' .. session.sync.lastSyncAt) or ''))
  end
  for _, preview in ipairs(type(session.previews) == 'table' and session.previews or {}) do
    add('preview ' .. tostring(preview.port), preview.url)
  end
  local held_back = {}
  for _, file in ipairs(first_use.held_back(session)) do
    table.insert(held_back, file.path .. ' (' .. tostring(file.rule) .. ')')
  end
  if #held_back > 0 then
    add('held back as likely secrets (:Sandlink allow uploads one)', table.concat(held_back, ', '))
  end
  local running = state.running_runs(workspace)
  if #running > 0 then
    local descriptions = {}
    for _, run in ipairs(running) do
      table.insert(descriptions, tostring(run.run_id) .. ' (' .. run.command .. ')')
    end
    add('running', table.concat(descriptions, ', '))
  end
  return lines
end

function commands.status(on_done)
  local workspace = require_workspace()
  if workspace == nil then
    return finish(on_done, { message = 'not set up' })
  end
  if workspace.session == nil then
    notify(state.statusline(workspace):gsub('^sandlink: ', '') .. ' (' .. workspace.root_dir .. ')')
    return finish(on_done, nil, nil)
  end
  client.request(workspace, protocol.request.status, { sessionId = workspace.session.sessionId }, function(err, session)
    if err then
      notify_error('status failed', err)
      return finish(on_done, err)
    end
    workspace.session = session
    if session.state == 'disconnected' or session.state == 'expired' then
      workspace.session = nil
    end
    state.announce_change()
    vim.notify(table.concat(commands.describe_session(session, workspace), '\n'), vim.log.levels.INFO)
    finish(on_done, nil, session)
  end)
end

-- Reads a file of the sandbox (relative to its root) without showing a run: on_done(err, text). `cat` runs without a
-- shell, so any name works; every driver with runs can do it.
function commands.read_sandbox_file(workspace, path, on_done)
  if workspace.session == nil then
    return finish(on_done, not_connected_error())
  end
  local params = { sessionId = workspace.session.sessionId, command = 'cat', args = { '--', path } }
  state.run_requests_in_flight = state.run_requests_in_flight + 1
  client.request(workspace, protocol.request.run, params, function(err, result)
    state.run_requests_in_flight = state.run_requests_in_flight - 1
    if err or type(result) ~= 'table' or result.runId == nil then
      return finish(on_done, err or { message = 'no runId in the response' })
    end
    state.runs[result.runId] = {
      run_id = result.runId,
      collected = { stdout = {}, stderr = {} },
      collect = function(exit, stdout, stderr)
        if exit.exitCode ~= 0 then
          return finish(on_done, { message = 'the sandbox could not read ' .. path .. ': ' .. vim.trim(stderr) })
        end
        finish(on_done, nil, stdout)
      end,
    }
    require('sandlink.handlers').replay_held_messages(result.runId, workspace)
  end)
end

-- Settles a sync conflict: keep = 'workspace' sends the workspace's version to the sandbox, 'sandbox' brings the
-- sandbox's version into the workspace (and reloads a buffer showing it).
function commands.resolve(path, keep, on_done)
  local workspace = require_workspace()
  if workspace == nil then
    return finish(on_done, { message = 'not set up' })
  end
  if workspace.session == nil then
    notify('not connected to a sandbox', vim.log.levels.WARN)
    return finish(on_done, not_connected_error())
  end
  local params = { sessionId = workspace.session.sessionId, path = path, keep = keep }
  client.request(workspace, protocol.request.resolve, params, function(err, result)
    if err then
      notify_error('resolving ' .. path .. ' failed', err)
      return finish(on_done, err)
    end
    if keep == 'sandbox' then
      local buffer = vim.fn.bufnr(workspace.root_dir .. '/' .. path)
      if buffer > 0 and vim.api.nvim_buf_is_loaded(buffer) then
        vim.api.nvim_buf_call(buffer, function()
          vim.cmd('checktime')
        end)
      end
    end
    notify(keep == 'workspace' and ('kept your ' .. path .. '; the sandbox has it now')
      or ('took the sandbox\'s ' .. path))
    finish(on_done, nil, result)
  end)
end

-- Opens the sandbox's version of a conflicting file beside the workspace's, in diff mode, with :Sandlink resolve
-- ready for either answer.
function commands.compare(path, on_done)
  local workspace = require_workspace()
  if workspace == nil then
    return finish(on_done, { message = 'not set up' })
  end
  commands.read_sandbox_file(workspace, path, function(err, text)
    if err then
      notify_error('reading the sandbox\'s ' .. path .. ' failed', err)
      return finish(on_done, err)
    end
    vim.cmd('tabedit ' .. vim.fn.fnameescape(workspace.root_dir .. '/' .. path))
    vim.cmd('diffthis')
    vim.cmd('vertical leftabove new')
    local buffer = vim.api.nvim_get_current_buf()
    local lines = vim.split(text, '\n', { plain = true })
    if lines[#lines] == '' then
      table.remove(lines)
    end
    vim.api.nvim_buf_set_lines(buffer, 0, -1, false, lines)
    vim.bo[buffer].buftype = 'nofile'
    vim.bo[buffer].bufhidden = 'wipe'
    vim.bo[buffer].modifiable = false
    pcall(vim.api.nvim_buf_set_name, buffer, 'sandbox://' .. path)
    vim.cmd('diffthis')
    notify(path .. ': sandbox (left) and workspace (right). :Sandlink resolve ' .. path
      .. ' mine keeps yours, :Sandlink resolve ' .. path .. ' sandbox takes the sandbox\'s')
    finish(on_done, nil, buffer)
  end)
end

-- The session's current conflicts, as the server last reported them.
function commands.conflicts(workspace)
  local session = workspace and workspace.session
  return session and session.sync and session.sync.conflicts or {}
end

-- Refreshes the cached profile and driver lists that completion and :Sandlink profiles use.
function commands.refresh_catalog(workspace, on_done)
  local remaining = 4
  local function one_done()
    remaining = remaining - 1
    if remaining == 0 then
      finish(on_done, nil, workspace)
    end
  end
  client.request(workspace, protocol.request.profiles, vim.empty_dict(), function(err, result)
    if not err and type(result) == 'table' then
      workspace.profiles = result.profiles or {}
    end
    one_done()
  end)
  client.request(workspace, protocol.request.drivers, vim.empty_dict(), function(err, result)
    if not err and type(result) == 'table' then
      workspace.drivers = result.drivers or {}
    end
    one_done()
  end)
  commands.refresh_tasks(workspace, one_done)
  -- Sessions kept (disconnect keep) by an earlier server can be re-attached with `:Sandlink connect reuse=<id>`.
  commands.refresh_known_sessions(workspace, one_done)
end

-- Asks the server for its sessions (live, then kept) and keeps them for completion; on_done(err, list).
function commands.refresh_known_sessions(workspace, on_done)
  client.request(workspace, protocol.request.sessions, vim.empty_dict(), function(err, result)
    if not err and type(result) == 'table' then
      workspace.known_sessions = result.sessions or {}
    end
    finish(on_done, err, workspace.known_sessions)
  end)
end

-- Removes a kept sandbox that no editor has attached: the server re-attaches it, ends its runs and deletes it.
function commands.remove_session(workspace, session_id, on_done)
  client.request(workspace, protocol.request.disconnect, { sessionId = session_id, keep = false }, function(err, result)
    if err then
      notify_error('removing ' .. session_id .. ' failed', err)
      return finish(on_done, err)
    end
    notify('removed the sandbox ' .. session_id)
    commands.refresh_known_sessions(workspace, function()
      finish(on_done, nil, result)
    end)
  end)
end

-- Runs one of sessions.actions_for's actions on a session.
local function run_session_action(workspace, session, action, on_done)
  if action == 'reattach' then
    return commands.connect({ workspace = workspace, reuse = session.sessionId }, on_done)
  elseif action == 'disconnect_keep' or action == 'disconnect_remove' then
    return commands.disconnect({ keep = action == 'disconnect_keep' }, on_done)
  elseif action == 'remove' then
    return commands.remove_session(workspace, session.sessionId, on_done)
  end
  finish(on_done, nil, nil)
end

-- :Sandlink sessions: every sandbox the server knows (this workspace's, kept ones, ones left by an exited sandlink or
-- held by another window) in a vim.ui.select list, then what can be done to the chosen one (re-attach, disconnect,
-- remove). on_done(err, result) follows the action.
function commands.sessions(on_done)
  local workspace = require_workspace()
  if workspace == nil then
    return finish(on_done, { message = 'not set up' })
  end
  commands.refresh_known_sessions(workspace, function(err, list)
    if err then
      notify_error('listing sessions failed', err)
      return finish(on_done, err)
    end
    if #list == 0 then
      notify('no sandboxes: :Sandlink connect starts one')
      return finish(on_done, nil, nil)
    end
    local current_id = workspace.session and workspace.session.sessionId or nil
    local now = os.time()
    vim.ui.select(list, {
      prompt = 'sandlink sessions:',
      kind = 'sandlink.sessions',
      format_item = function(session)
        return sessions.describe(session, current_id, now)
      end,
    }, function(session)
      if session == nil then
        return finish(on_done, nil, nil)
      end
      local actions = sessions.actions_for(session, workspace)
      if #actions == 0 then
        notify(tostring(session.sessionId) .. ': ' .. tostring(session.message or session.state)
          .. ' (nothing to do for it from here)')
        return finish(on_done, nil, nil)
      end
      vim.ui.select(actions, {
        prompt = 'Session ' .. tostring(session.sessionId) .. ':',
        kind = 'sandlink.session_action',
        format_item = function(action)
          return action.label
        end,
      }, function(action)
        if action == nil then
          return finish(on_done, nil, nil)
        end
        run_session_action(workspace, session, action.id, on_done)
      end)
    end)
  end)
end

-- `:Sandlink connect reuse=` without an id: the workspace's kept sessions with their driver, workspace and age in a
-- select list (completion can only offer bare ids), and the chosen one is re-attached.
function commands.pick_reattach(on_done)
  local workspace = require_workspace()
  if workspace == nil then
    return finish(on_done, { message = 'not set up' })
  end
  commands.refresh_known_sessions(workspace, function(err, list)
    if err then
      notify_error('listing sessions failed', err)
      return finish(on_done, err)
    end
    local candidates = sessions.reattachable(list, workspace)
    if #candidates == 0 then
      notify(workspace.session and 'connected already; :Sandlink disconnect first'
        or 'no kept sandbox of this workspace to re-attach')
      return finish(on_done, nil, nil)
    end
    local now = os.time()
    vim.ui.select(candidates, {
      prompt = 'Re-attach which sandbox?',
      kind = 'sandlink.reattach',
      format_item = function(session)
        return sessions.describe(session, nil, now)
      end,
    }, function(session)
      if session == nil then
        return finish(on_done, nil, nil)
      end
      commands.connect({ workspace = workspace, reuse = session.sessionId }, on_done)
    end)
  end)
end

-- :Sandlink runs: the workspace's running and recent runs; the chosen one's output buffer is shown, or it is cancelled.
function commands.runs(on_done)
  local workspace = require_workspace()
  if workspace == nil then
    return finish(on_done, { message = 'not set up' })
  end
  local output = require('sandlink.output')
  local listed = sessions.runs_to_list(state.runs, workspace.root_dir, 20)
  if #listed == 0 then
    notify('no runs yet: :Sandlink run <command line or task> starts one')
    return finish(on_done, nil, nil)
  end
  vim.ui.select(listed, {
    prompt = 'sandlink runs:',
    kind = 'sandlink.runs',
    format_item = function(run)
      return sessions.describe_run(run, output.exit_line)
    end,
  }, function(run)
    if run == nil then
      return finish(on_done, nil, nil)
    end
    local actions = { { id = 'show', label = 'Show output' } }
    if not run.finished then
      table.insert(actions, { id = 'cancel', label = 'Cancel' })
    end
    vim.ui.select(actions, {
      prompt = 'Run ' .. tostring(run.run_id) .. ':',
      kind = 'sandlink.run_action',
      format_item = function(action)
        return action.label
      end,
    }, function(action)
      if action == nil then
        return finish(on_done, nil, nil)
      end
      if action.id == 'cancel' then
        return commands.cancel(run.run_id, on_done)
      end
      if run.view and vim.api.nvim_buf_is_valid(run.view.buffer) then
        -- Shown even when output windows are configured off: the user asked for this run's output.
        if output.show(run.view) == nil then
          vim.api.nvim_set_current_buf(run.view.buffer)
        end
        return finish(on_done, nil, run)
      end
      local log_path = type(run.exit) == 'table' and run.exit.logPath or nil
      if type(log_path) == 'string' and vim.fn.filereadable(log_path) == 1 then
        vim.cmd('edit ' .. vim.fn.fnameescape(log_path))
        return finish(on_done, nil, run)
      end
      notify('the output of ' .. tostring(run.run_id) .. ' is gone (its buffer was wiped and it left no log)',
        vim.log.levels.WARN)
      finish(on_done, nil, nil)
    end)
  end)
end

function commands.profiles(on_done)
  local workspace = require_workspace()
  if workspace == nil then
    return finish(on_done, { message = 'not set up' })
  end
  client.request(workspace, protocol.request.profiles, vim.empty_dict(), function(err, result)
    if err then
      notify_error('listing profiles failed', err)
      return finish(on_done, err)
    end
    local profiles = result.profiles or {}
    workspace.profiles = profiles
    if #profiles == 0 then
      notify('no profiles yet; :Sandlink connect driver=local (or docker, ssh, ...) connects without one')
      return finish(on_done, nil, profiles)
    end
    vim.ui.select(profiles, {
      prompt = 'Connect with profile:',
      format_item = function(profile)
        -- needsTrust: picking it asks to trust the workspace first, with where code and which credential would go.
        return profile.name .. ' (' .. tostring(profile.driver) .. ')' .. (profile.default and ' [default]' or '')
          .. (profile.hasCredentials and '' or ' [no credentials]') .. (profile.needsTrust and ' [asks for trust]' or '')
      end,
    }, function(choice)
      if choice then
        commands.connect({ profile = choice.name })
      end
    end)
    finish(on_done, nil, profiles)
  end)
end

-- The `sandlink.*` commands the server puts in its code actions and code lens (protocol.command), run by the plugin
-- rather than sent back as workspace/executeCommand: so a session an action starts is the plugin's session, a run's
-- output gets its buffer, and a connect or task the workspace's trust refuses is put to the user (ask_to_trust) and
-- tried once more, as with :Sandlink. They go into the client config's `commands`, which vim.lsp looks in before it
-- sends workspace/executeCommand (code actions and code lenses alike, 0.7 onwards). Each gets (command, ctx): the
-- LSP Command, whose one argument is the params of the matching request, and ctx.client_id.
function commands.lsp_command_handlers()
  local function action_argument(command)
    local argument = type(command.arguments) == 'table' and command.arguments[1] or nil
    return type(argument) == 'table' and argument or {}
  end
  local function action_workspace(ctx)
    return (type(ctx) == 'table' and ctx.client_id and state.workspace_for_client(ctx.client_id)) or state.current_workspace()
  end
  -- An action is offered for the session that was live when the menu was built; one for an ended session does nothing.
  local function still_the_session(workspace, argument)
    local session = workspace and workspace.session
    if session == nil then
      notify_error('that action', not_connected_error())
      return false
    end
    if argument.sessionId ~= nil and argument.sessionId ~= session.sessionId then
      notify('that action was offered for session ' .. tostring(argument.sessionId) .. ', which has ended; '
        .. 'ask for the actions again', vim.log.levels.WARN)
      return false
    end
    return true
  end
  local p = protocol.command
  return {
    [p.connect] = function(command, ctx)
      local argument = action_argument(command)
      commands.connect({ workspace = action_workspace(ctx), driver = argument.driver, profile = argument.profile,
        reuse = argument.reuse })
    end,
    [p.disconnect] = function(command, ctx)
      local argument = action_argument(command)
      if still_the_session(action_workspace(ctx), argument) then
        commands.disconnect({ keep = argument.keep == true })
      end
    end,
    [p.run] = function(command, ctx)
      local argument, workspace = action_argument(command), action_workspace(ctx)
      if type(argument.task) ~= 'string' then
        -- The server's actions run tasks by name; a command line in an action would skip the trust a task needs.
        return notify('an action runs a .sandlink.toml task by name; :Sandlink run runs a command line',
          vim.log.levels.WARN)
      end
      if still_the_session(workspace, argument) then
        commands.run(argument.task, { task = true, workspace = workspace })
      end
    end,
    [p.cancel] = function(command)
      local argument = action_argument(command)
      if argument.runId ~= nil then
        commands.cancel(tostring(argument.runId))
      end
    end,
    [p.sync] = function(command, ctx)
      local argument = action_argument(command)
      if still_the_session(action_workspace(ctx), argument) then
        commands.sync(argument.direction)
      end
    end,
    [p.preview] = function(command, ctx)
      local argument = action_argument(command)
      if still_the_session(action_workspace(ctx), argument) then
        commands.preview(argument.port)
      end
    end,
    [p.status] = function()
      commands.status()
    end,
    [p.extend] = function(command, ctx)
      local argument = action_argument(command)
      if still_the_session(action_workspace(ctx), argument) then
        commands.extend(argument.seconds)
      end
    end,
  }
end

-- Splits "driver=docker sync=false myprofile" into connect options; a bare word is a profile name.
function commands.parse_connect_arguments(words)
  local options = {}
  for _, word in ipairs(words) do
    local key, value = word:match('^(%w+)=(.*)$')
    if key == 'sync' then
      options.sync = value ~= 'false' and value ~= '0' and value ~= 'no'
    elseif key == 'driver' or key == 'profile' or key == 'reuse' then
      options[key] = value
    elseif key then
      options.settings = options.settings or {}
      options.settings[key] = value
    else
      options.profile = word
    end
  end
  return options
end

local function split_words(text)
  local words = {}
  for word in (text or ''):gmatch('%S+') do
    table.insert(words, word)
  end
  return words
end

-- The subcommand table: what each one does with the rest of the line, and how its argument completes.
commands.subcommands = {
  connect = {
    run = function(rest)
      local options = commands.parse_connect_arguments(split_words(rest))
      if options.reuse == '' then
        -- `reuse=` alone: pick the sandbox from a list that says what each one is.
        return commands.pick_reattach()
      end
      commands.connect(options)
    end,
    complete = function(workspace)
      local candidates = { 'sync=false' }
      for _, profile in ipairs(workspace and workspace.profiles or {}) do
        table.insert(candidates, profile.name)
      end
      for _, driver in ipairs(workspace and workspace.drivers or {}) do
        table.insert(candidates, 'driver=' .. driver.id)
        -- A bare driver name connects that driver (the server's rule) unless a profile has the same name.
        if not vim.tbl_contains(candidates, driver.id) then
          table.insert(candidates, driver.id)
        end
      end
      -- Only what can be re-attached here; `reuse=` alone opens a list with each one's driver, workspace and age.
      local reattachable = sessions.reattachable(workspace and workspace.known_sessions, workspace)
      if #reattachable > 0 then
        table.insert(candidates, 'reuse=')
      end
      for _, session in ipairs(reattachable) do
        table.insert(candidates, 'reuse=' .. tostring(session.sessionId))
      end
      return candidates
    end,
  },
  disconnect = {
    run = function(rest)
      commands.disconnect({ keep = vim.trim(rest) == 'keep' })
    end,
    complete = function()
      return { 'keep' }
    end,
  },
  run = {
    run = function(rest)
      if vim.trim(rest) ~= '' then
        return commands.run(rest)
      end
      -- Without a command line, ask for one; the task names are the likely answers.
      local workspace = state.current_workspace()
      local task_names = vim.tbl_keys(workspace and commands.read_tasks(workspace) or {})
      table.sort(task_names)
      local prompt = 'Run in the sandbox' .. (#task_names > 0 and (' (tasks: ' .. table.concat(task_names, ', ') .. ')') or '')
      vim.ui.input({ prompt = prompt .. ': ' }, function(answer)
        if answer and vim.trim(answer) ~= '' then
          commands.run(answer)
        end
      end)
    end,
    complete = function(workspace)
      local names = vim.tbl_keys(workspace and commands.read_tasks(workspace) or {})
      table.sort(names)
      return names
    end,
  },
  cancel = {
    run = function(rest)
      commands.cancel(vim.trim(rest))
    end,
    complete = function(workspace)
      local run_ids = {}
      for _, run in ipairs(state.running_runs(workspace)) do
        table.insert(run_ids, tostring(run.run_id))
      end
      return run_ids
    end,
  },
  sync = {
    run = function(rest)
      commands.sync(vim.trim(rest))
    end,
    complete = function()
      return { 'up', 'down', 'both' }
    end,
  },
  preview = {
    run = function(rest)
      commands.preview(vim.trim(rest))
    end,
    complete = function(workspace)
      local ports = {}
      local session = workspace and workspace.session
      for _, preview in ipairs(session and type(session.previews) == 'table' and session.previews or {}) do
        table.insert(ports, tostring(preview.port))
      end
      return ports
    end,
  },
  status = {
    run = function()
      commands.status()
    end,
  },
  extend = {
    run = function(rest)
      commands.extend(vim.trim(rest))
    end,
    complete = function()
      return { '900', '1800', '3600' }
    end,
  },
  profiles = {
    run = function()
      commands.profiles()
    end,
  },
  -- :Sandlink conflicts: pick a conflict, then compare it or keep one side.
  conflicts = {
    run = function()
      local conflicts = commands.conflicts(state.current_workspace())
      if #conflicts == 0 then
        return notify('no sync conflicts')
      end
      vim.ui.select(conflicts, {
        prompt = 'sandlink: sync conflicts',
        format_item = function(conflict)
          return conflict.path .. ' (' .. tostring(conflict.reason) .. ')'
        end,
      }, function(conflict)
        if conflict == nil then
          return
        end
        local answers = { 'Compare', 'Keep mine', "Take the sandbox's" }
        vim.ui.select(answers, { prompt = 'sandlink: ' .. conflict.path }, function(answer)
          if answer == 'Compare' then
            commands.compare(conflict.path)
          elseif answer == 'Keep mine' then
            commands.resolve(conflict.path, 'workspace')
          elseif answer ~= nil then
            commands.resolve(conflict.path, 'sandbox')
          end
        end)
      end)
    end,
  },
  -- :Sandlink resolve PATH mine|sandbox
  resolve = {
    run = function(rest)
      local words = split_words(rest)
      local sides = { mine = 'workspace', workspace = 'workspace', sandbox = 'sandbox', theirs = 'sandbox' }
      if #words ~= 2 or sides[words[2]] == nil then
        return notify('usage: :Sandlink resolve PATH mine|sandbox (:Sandlink conflicts lists them)', vim.log.levels.WARN)
      end
      commands.resolve(words[1], sides[words[2]])
    end,
    complete = function(workspace)
      local candidates = { 'mine', 'sandbox' }
      for _, conflict in ipairs(commands.conflicts(workspace)) do
        table.insert(candidates, conflict.path)
      end
      return candidates
    end,
  },
  sessions = {
    run = function()
      commands.sessions()
    end,
  },
  runs = {
    run = function()
      commands.runs()
    end,
  },
  quickfix = {
    run = function()
      commands.quickfix()
    end,
  },
  -- :Sandlink terminal [command]: a terminal buffer on the sandbox's login shell (or the command).
  terminal = {
    run = function(rest)
      require('sandlink.terminal').open({ command = rest })
    end,
  },
  shell = {
    run = function(rest)
      require('sandlink.terminal').open({ command = rest })
    end,
  },
  -- :Sandlink secrets lists the held-back files to pick one to upload, as :Sandlink allow without a path does.
  secrets = {
    run = function()
      local workspace = require_workspace()
      if workspace then
        first_use.allow(workspace, '')
      end
    end,
  },
  -- :Sandlink allow [PATH]: uploads a file held back as a likely secret, after asking for how long.
  allow = {
    run = function(rest)
      local workspace = require_workspace()
      if workspace == nil then
        return
      end
      first_use.allow(workspace, vim.trim(rest or ''))
    end,
    complete = function(workspace)
      local candidates = {}
      for _, file in ipairs(first_use.held_back(workspace and workspace.session)) do
        table.insert(candidates, file.path)
      end
      return candidates
    end,
  },
  task = {
    run = function(rest)
      require('sandlink.agent_tasks').run(split_words(rest))
    end,
    complete = function()
      return require('sandlink.agent_tasks').action_names()
    end,
  },
}

function commands.subcommand_names()
  local names = vim.tbl_keys(commands.subcommands)
  table.sort(names)
  return names
end

-- Entry point of :Sandlink; the raw argument string keeps a run's command line exactly as typed.
function commands.dispatch(raw_arguments)
  local name, rest = (raw_arguments or ''):match('^%s*(%S+)%s*(.-)%s*$')
  if name == nil then
    name, rest = 'status', ''
  end
  local subcommand = commands.subcommands[name]
  if subcommand == nil then
    notify('unknown subcommand `' .. name .. '`; one of: ' .. table.concat(commands.subcommand_names(), ', '),
      vim.log.levels.ERROR)
    return
  end
  subcommand.run(rest)
end

local function starting_with(candidates, prefix)
  local matching = {}
  for _, candidate in ipairs(candidates) do
    if candidate:sub(1, #prefix) == prefix then
      table.insert(matching, candidate)
    end
  end
  return matching
end

-- Completion for :Sandlink: subcommands first, then the chosen subcommand's own candidates.
function commands.complete(argument_lead, command_line, cursor_position)
  local before_cursor = command_line:sub(1, cursor_position)
  local words = split_words(before_cursor)
  -- words[1] is the command itself; when the cursor is after a space, a new word is being started.
  local completing_index = #words + (before_cursor:match('%s$') and 1 or 0)
  if completing_index <= 2 then
    return starting_with(commands.subcommand_names(), argument_lead)
  end
  local subcommand = commands.subcommands[words[2]]
  if subcommand == nil or subcommand.complete == nil then
    return {}
  end
  return starting_with(subcommand.complete(state.current_workspace()), argument_lead)
end

return commands
