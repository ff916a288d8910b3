-- Handlers for the server's sandlink/* notifications, registered in the client config (as rustaceanvim does).

local protocol = require('sandlink.protocol')
local state = require('sandlink.state')

local handlers = {}

-- The buffer for a run the plugin did not start itself (a code action, another client of the same server).
local function view_for_unknown_run(run_id, workspace)
  local output = require('sandlink.output')
  local view = output.create('run ' .. tostring(run_id), workspace and workspace.root_dir or nil)
  local run = {
    run_id = run_id,
    root_dir = workspace and workspace.root_dir or nil,
    command = 'run ' .. tostring(run_id),
    view = view,
    finished = false,
    started_order = state.next_run_order(),
  }
  state.runs[run_id] = run
  output.show(view)
  return run
end

-- Returns the run, or nil after holding the message back while a sandlink/run response may still name it.
local function find_run(run_id, message_kind, params, workspace)
  local run = state.runs[run_id]
  if run then
    return run
  end
  if state.run_requests_in_flight > 0 then
    local held = state.output_before_run_known[run_id] or {}
    table.insert(held, { kind = message_kind, params = params })
    state.output_before_run_known[run_id] = held
    return nil
  end
  return view_for_unknown_run(run_id, workspace)
end

function handlers.on_output(params, workspace)
  local run = find_run(params.runId, 'output', params, workspace)
  if run == nil then
    return
  end
  if run.collect then
    -- A run the plugin reads for itself (a sandbox file for a diff): kept, not shown.
    table.insert(run.collected[params.stream] or {}, params.text)
    return
  end
  if run.terminal then
    return require('sandlink.terminal').write(run.terminal, params.text)
  end
  require('sandlink.output').append(run.view, params.stream, params.text)
end

function handlers.on_exit(params, workspace)
  local run = find_run(params.runId, 'exit', params, workspace)
  if run == nil then
    return
  end
  run.finished = true
  run.exit = params
  if run.collect then
    state.runs[params.runId] = nil
    return run.collect(params, table.concat(run.collected.stdout), table.concat(run.collected.stderr))
  end
  if run.terminal then
    return require('sandlink.terminal').finish(run.terminal, params)
  end
  local output = require('sandlink.output')
  output.finish(run.view, params)
  local succeeded = params.exitCode == 0 and not params.cancelled and not params.timedOut
  -- A failed run's file locations go to the quickfix list (a run that failed by exiting, not one that was stopped).
  local located = 0
  if params.exitCode ~= nil and params.exitCode ~= vim.NIL and params.exitCode ~= 0 and not params.cancelled then
    located = require('sandlink.quickfix').load(run) or 0
  end
  local where = located > 0 and ('; :copen lists ' .. located .. ' location' .. (located == 1 and '' or 's')) or ''
  -- When no window shows the run, the user would not see it end; say so once, quietly unless it failed.
  if vim.api.nvim_buf_is_valid(run.view.buffer) and #vim.fn.win_findbuf(run.view.buffer) == 0 then
    vim.notify('sandlink: `' .. tostring(run.command) .. '` ' .. output.exit_line(params)
      .. ' (:buffer ' .. run.view.buffer .. ' shows the output' .. where .. ')',
      succeeded and vim.log.levels.INFO or vim.log.levels.WARN)
  elseif located > 0 then
    vim.notify('sandlink: `' .. tostring(run.command) .. '` ' .. output.exit_line(params) .. where, vim.log.levels.WARN)
  end
  state.announce_change()
end

-- Replays messages that arrived before the sandlink/run response, in the order they came.
function handlers.replay_held_messages(run_id, workspace)
  local held = state.output_before_run_known[run_id]
  state.output_before_run_known[run_id] = nil
  for _, message in ipairs(held or {}) do
    if message.kind == 'output' then
      handlers.on_output(message.params, workspace)
    else
      handlers.on_exit(message.params, workspace)
    end
  end
end

local function session_matches(workspace, session_id)
  return workspace and workspace.session and workspace.session.sessionId == session_id
end

-- A session this plugin did not connect (a code action, :lua vim.lsp.buf.execute_command) is adopted when it
-- becomes active and belongs to this workspace, so that :Sandlink run and the status line follow it.
local function adopt_session(params, workspace)
  local client = require('sandlink.client')
  local protocol_requests = protocol.request
  client.request(workspace, protocol_requests.status, { sessionId = params.sessionId }, function(err, session)
    if err or type(session) ~= 'table' or workspace.session ~= nil then
      return
    end
    local folder = session.workspaceFolder
    if type(folder) == 'string' and folder ~= vim.uri_from_fname(workspace.root_dir) then
      return
    end
    workspace.session = session
    state.announce_change()
  end)
end

function handlers.on_session_state(params, workspace)
  if workspace and workspace.session == nil and not workspace.connecting and params.state == 'active' then
    adopt_session(params, workspace)
    return
  end
  if not session_matches(workspace, params.sessionId) then
    return
  end
  workspace.session.state = params.state
  if params.state == 'disconnected' or params.state == 'expired' then
    workspace.session = nil
  end
  if params.state == 'error' or params.state == 'expired' then
    local message = params.message ~= vim.NIL and params.message or nil
    vim.notify('sandlink: the session is ' .. params.state .. (message and (': ' .. message) or ''), vim.log.levels.WARN)
  end
  state.announce_change()
end

function handlers.on_sync_state(params, workspace)
  if not session_matches(workspace, params.sessionId) then
    return
  end
  local sync = {}
  for key, value in pairs(params) do
    if key ~= 'sessionId' then
      sync[key] = value
    end
  end
  workspace.session.sync = sync
  if type(sync.conflicts) == 'table' and #sync.conflicts > 0 then
    local conflict_paths = {}
    for _, conflict in ipairs(sync.conflicts) do
      table.insert(conflict_paths, tostring(conflict.path) .. ' (' .. tostring(conflict.reason) .. ')')
    end
    vim.notify('sandlink: sync conflicts: ' .. table.concat(conflict_paths, ', '), vim.log.levels.WARN)
  end
  state.announce_change()
end

function handlers.on_preview_ready(params, workspace)
  if session_matches(workspace, params.sessionId) then
    local previews = workspace.session.previews
    if type(previews) ~= 'table' then
      previews = {}
      workspace.session.previews = previews
    end
    local known = false
    for _, preview in ipairs(previews) do
      if preview.port == params.port then
        preview.url, known = params.url, true
      end
    end
    if not known then
      table.insert(previews, { port = params.port, url = params.url })
    end
  end
  if require('sandlink.config').options.preview.open_when_ready then
    require('sandlink.commands').open_url(params.url)
  else
    vim.notify('sandlink: preview of port ' .. tostring(params.port) .. ' is ready: ' .. tostring(params.url)
      .. ' (:Sandlink preview ' .. tostring(params.port) .. ' opens it)', vim.log.levels.INFO)
  end
end

local function describe_seconds(seconds)
  seconds = tonumber(seconds) or 0
  if seconds >= 120 then
    return math.floor(seconds / 60) .. ' minutes'
  end
  return math.floor(seconds) .. ' seconds'
end

function handlers.on_timeout_warning(params, workspace)
  if params.reason == 'runLimit' and params.runId ~= nil then
    -- A run nears its hard limit (the lifecycle policy); the sandbox itself does not expire.
    vim.notify('sandlink: run ' .. tostring(params.runId) .. ' is stopped at its time limit in '
      .. describe_seconds(params.secondsLeft) .. ' (at ' .. tostring(params.expiresAt) .. ')', vim.log.levels.WARN)
    return
  end
  if session_matches(workspace, params.sessionId) then
    workspace.session.expiresAt = params.expiresAt
  end
  vim.notify('sandlink: the sandbox expires in ' .. describe_seconds(params.secondsLeft) .. ' (at '
    .. tostring(params.expiresAt) .. '); :Sandlink extend keeps it longer', vim.log.levels.WARN)
  state.announce_change()
end

-- The table given to the client config: LSP handler signature (err, result, ctx), dispatched to the functions above.
function handlers.for_client_config()
  local by_method = {
    [protocol.notification.output] = handlers.on_output,
    [protocol.notification.exit] = handlers.on_exit,
    [protocol.notification.session_state] = handlers.on_session_state,
    [protocol.notification.sync_state] = handlers.on_sync_state,
    [protocol.notification.preview_ready] = handlers.on_preview_ready,
    [protocol.notification.timeout_warning] = handlers.on_timeout_warning,
  }
  local client_handlers = {}
  for method, handle in pairs(by_method) do
    client_handlers[method] = function(_, params, context)
      if type(params) ~= 'table' then
        return
      end
      local workspace = context and state.workspace_for_client(context.client_id) or nil
      local ok, err = pcall(handle, params, workspace)
      if not ok then
        vim.notify('sandlink: handling ' .. method .. ' failed: ' .. tostring(err), vim.log.levels.ERROR)
      end
    end
  end
  return client_handlers
end

return handlers
