-- How :Sandlink sessions, :Sandlink runs and `:Sandlink connect reuse=` describe sessions and runs: pure functions of
-- the server's SessionInfo lists and the plugin's run records, with no requests, so unit_spec tests them.

local sessions = {}

-- RFC 3339 text (as the server writes it, `2026-12-05T05:58:34.49Z` or with an offset) as seconds since the epoch.
function sessions.epoch_seconds(text)
  if type(text) ~= 'string' then
    return nil
  end
  local year, month, day, hour, minute, second, zone =
    text:match('^(%d+)-(%d+)-(%d+)[Tt ](%d+):(%d+):(%d+)%.?%d*(.*)$')
  if year == nil then
    return nil
  end
  year, month, day = tonumber(year), tonumber(month), tonumber(day)
  -- Days from 1970-01-01 to the civil date (Howard Hinnant's days_from_civil), so no local time zone gets involved.
  local shifted_year = month <= 2 and year - 1 or year
  local era = math.floor(shifted_year / 400)
  local year_of_era = shifted_year - era * 400
  local day_of_year = math.floor((153 * (month + (month > 2 and -3 or 9)) + 2) / 5) + day - 1
  local day_of_era = year_of_era * 365 + math.floor(year_of_era / 4) - math.floor(year_of_era / 100) + day_of_year
  local days = era * 146097 + day_of_era - 719468
  local seconds = days * 86400 + tonumber(hour) * 3600 + tonumber(minute) * 60 + tonumber(second)
  local sign, zone_hours, zone_minutes = zone:match('^([+-])(%d+):?(%d*)$')
  if sign then
    local offset = tonumber(zone_hours) * 3600 + (tonumber(zone_minutes) or 0) * 60
    seconds = sign == '+' and seconds - offset or seconds + offset
  end
  return seconds
end

-- `just now`, `5 min ago`, `3 h ago`, `2 days ago`; nil for a time that cannot be read.
function sessions.age(text, now_seconds)
  local since = sessions.epoch_seconds(text)
  if since == nil then
    return nil
  end
  local seconds = math.max(0, (now_seconds or os.time()) - since)
  if seconds < 60 then
    return 'just now'
  elseif seconds < 3600 then
    return math.floor(seconds / 60) .. ' min ago'
  elseif seconds < 48 * 3600 then
    return math.floor(seconds / 3600) .. ' h ago'
  end
  return math.floor(seconds / 86400) .. ' days ago'
end

-- A workspace folder URI (or path) as a path without a trailing slash.
local function folder_path(folder)
  if type(folder) ~= 'string' then
    return nil
  end
  local path = folder:match('^file://') and vim.uri_to_fname(folder) or folder
  return (path:gsub('/+$', ''))
end

function sessions.folder_name(folder)
  local path = folder_path(folder)
  return path and (path:match('([^/]+)$') or path) or nil
end

-- Where a listed session stands: `here` (this workspace's), `kept` (disconnected with keep), `orphaned` (left by a
-- sandlink that exited without disconnecting), `elsewhere` (another sandlink has it), `expired`, `error`, or `busy`
-- (attached to this server for another workspace), from the server's `held` and the session's state.
function sessions.standing(session, current_session_id)
  if session.sessionId == current_session_id then
    return 'here'
  end
  if session.held == 'elsewhere' or session.held == 'kept' or session.held == 'orphaned' then
    return session.held
  elseif session.state == 'disconnected' then
    return 'kept'
  elseif session.state == 'expired' or session.state == 'error' then
    return session.state
  end
  return 'busy'
end

local standing_words = {
  here = 'connected here',
  kept = 'kept',
  orphaned = 'left by an exited sandlink',
  elsewhere = 'in another window',
  expired = 'expired',
  error = 'error',
  busy = 'attached',
}

-- Whether the session mirrors the workspace at root_dir (a session without a workspace fits any).
function sessions.belongs_to(session, root_dir)
  local path = folder_path(session.workspaceFolder)
  return path == nil or path == folder_path(root_dir)
end

-- One line for a select list: id, where it stands, driver (and profile), workspace, last activity.
function sessions.describe(session, current_session_id, now_seconds)
  local parts = { standing_words[sessions.standing(session, current_session_id)] }
  table.insert(parts, session.profile and (tostring(session.profile) .. ' (' .. tostring(session.driver) .. ')')
    or tostring(session.driver))
  local folder = sessions.folder_name(session.workspaceFolder)
  if folder then
    table.insert(parts, folder)
  end
  local last_active = sessions.age(session.lastActivity, now_seconds)
  if last_active then
    table.insert(parts, 'active ' .. last_active)
  end
  return tostring(session.sessionId) .. '  ' .. table.concat(parts, ', ')
end

-- Kept and orphaned sessions of the workspace, which `connect reuse=` re-attaches; none while it is connected.
function sessions.reattachable(list, workspace)
  local found = {}
  if workspace == nil or workspace.session ~= nil then
    return found
  end
  for _, session in ipairs(list or {}) do
    local standing = sessions.standing(session, nil)
    if (standing == 'kept' or standing == 'orphaned') and sessions.belongs_to(session, workspace.root_dir) then
      table.insert(found, session)
    end
  end
  return found
end

-- The actions :Sandlink sessions offers for a session, as { id, label } in menu order.
function sessions.actions_for(session, workspace)
  local current_id = workspace and workspace.session and workspace.session.sessionId or nil
  local standing = sessions.standing(session, current_id)
  local actions = {}
  if standing == 'here' then
    table.insert(actions, { id = 'disconnect_keep', label = 'Disconnect and keep the sandbox' })
    table.insert(actions, { id = 'disconnect_remove', label = 'Disconnect and remove the sandbox' })
  end
  if (standing == 'kept' or standing == 'orphaned') and current_id == nil and workspace
    and sessions.belongs_to(session, workspace.root_dir) then
    table.insert(actions, { id = 'reattach', label = 'Re-attach' })
  end
  if standing == 'kept' or standing == 'orphaned' or standing == 'error' then
    table.insert(actions, { id = 'remove', label = 'Remove the sandbox' })
  end
  return actions
end

-- The workspace's runs for :Sandlink runs: running ones first, then finished ones, newest first, at most `limit`
-- finished ones.
function sessions.runs_to_list(runs, root_dir, limit)
  local running, finished = {}, {}
  for _, run in pairs(runs or {}) do
    if root_dir == nil or run.root_dir == root_dir then
      table.insert(run.finished and finished or running, run)
    end
  end
  local newest_first = function(a, b)
    return (a.started_order or 0) > (b.started_order or 0)
  end
  table.sort(running, newest_first)
  table.sort(finished, newest_first)
  local listed = running
  for index = 1, math.min(#finished, limit or 20) do
    table.insert(listed, finished[index])
  end
  return listed
end

-- One line for a run: how it stands (running, or its exit line without the log path) and what it runs.
function sessions.describe_run(run, exit_line)
  local how
  if not run.finished then
    how = '[running]'
  elseif type(run.exit) == 'table' and exit_line then
    how = (exit_line(run.exit):gsub(' full log: .*$', ''))
  else
    how = '[ended]'
  end
  return how .. ' ' .. tostring(run.command) .. '  (' .. tostring(run.run_id) .. ')'
end

return sessions
