-- What the plugin knows about workspaces, sessions and runs, and the status line text built from it.

local state = {}

-- root_dir -> { root_dir, client_id, ready, waiting_for_ready, session, drivers, profiles, stopped }
state.workspaces = {}
-- runId -> { run_id, root_dir, command, view, finished, exit }
state.runs = {}
-- Output that arrived before the sandlink/run response told us which buffer it belongs to, by runId.
state.output_before_run_known = {}
-- How many sandlink/run requests await their response; while > 0, unknown runIds are held back, not shown.
state.run_requests_in_flight = 0

local has_autocmd_data = vim.fn.has('nvim-0.8') == 1

-- Runs are ordered by when the plugin learned of them; "the newest running run" is what cancel picks.
local run_order_counter = 0
function state.next_run_order()
  run_order_counter = run_order_counter + 1
  return run_order_counter
end

function state.workspace(root_dir)
  return state.workspaces[root_dir]
end

function state.workspace_for_client(client_id)
  for _, workspace in pairs(state.workspaces) do
    if workspace.client_id == client_id then
      return workspace
    end
  end
  return nil
end

local function path_is_inside(path, directory)
  return path == directory or path:sub(1, #directory + 1) == directory .. '/'
end

-- The workspace of the current buffer, else of the current directory, else the only (or any) one there is.
function state.current_workspace()
  local buffer_path = vim.api.nvim_buf_get_name(0)
  local current_directory = vim.fn.getcwd()
  local best_match, best_length = nil, -1
  for root_dir, workspace in pairs(state.workspaces) do
    if (buffer_path ~= '' and path_is_inside(buffer_path, root_dir)) or path_is_inside(current_directory, root_dir) then
      if #root_dir > best_length then
        best_match, best_length = workspace, #root_dir
      end
    end
  end
  if best_match then
    return best_match
  end
  local _, any_workspace = next(state.workspaces)
  return any_workspace
end

function state.running_runs(workspace)
  local running = {}
  for _, run in pairs(state.runs) do
    if not run.finished and (workspace == nil or run.root_dir == workspace.root_dir) then
      table.insert(running, run)
    end
  end
  table.sort(running, function(a, b)
    return a.started_order > b.started_order
  end)
  return running
end

-- The status line text: short, plain ASCII, so that any status line plugin can show it as is.
function state.statusline(workspace)
  workspace = workspace or state.current_workspace()
  if workspace == nil then
    return ''
  end
  if workspace.stopped then
    return 'sandlink: server stopped'
  end
  if not workspace.ready then
    return 'sandlink: starting'
  end
  local session = workspace.session
  if session == nil then
    if workspace.connecting then
      return 'sandlink: connecting'
    end
    return 'sandlink: disconnected'
  end
  local label = session.profile or session.driver or 'sandbox'
  local parts = { 'sandlink: ' .. label .. ' ' .. tostring(session.state or 'active') }
  local running_count = #state.running_runs(workspace)
  if running_count > 0 then
    table.insert(parts, running_count .. ' running')
  end
  local sync = session.sync
  if type(sync) == 'table' then
    if type(sync.pending) == 'number' and sync.pending > 0 then
      table.insert(parts, sync.pending .. ' pending')
    end
    if type(sync.conflicts) == 'table' and #sync.conflicts > 0 then
      table.insert(parts, #sync.conflicts .. ' conflicts')
    end
  end
  return table.concat(parts, ', ')
end

-- Tells status line plugins to redraw: a `User SandlinkStatus` autocmd, with the status in `data` where supported.
function state.announce_change()
  local workspace = state.current_workspace()
  local options = { pattern = 'SandlinkStatus', modeline = false }
  if has_autocmd_data then
    options.data = {
      status = state.statusline(workspace),
      root_dir = workspace and workspace.root_dir or nil,
      session = workspace and workspace.session or nil,
    }
  end
  -- A status line plugin's error must not break the notification handler that caused the change.
  pcall(vim.api.nvim_exec_autocmds, 'User', options)
  pcall(vim.cmd, 'redrawstatus!')
end

return state
