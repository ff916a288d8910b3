-- `:Sandlink task start|status|commit|push|pr|end|list`: agent tasks (a repository cloned into a new sandbox on the
-- branch task-ID, committed, pushed from this machine, opened as a pull request; see docs/tasks.md).

local client = require('sandlink.client')
local protocol = require('sandlink.protocol')
local state = require('sandlink.state')

local agent_tasks = {}

local function notify(message, level)
  vim.notify('sandlink: ' .. message, level or vim.log.levels.INFO)
end

local function describe(task)
  local pushed = task.pushedCommit and task.pushedCommit:sub(1, 7) or '-'
  local text = string.format('task %s %s on %s, %d commit(s), pushed %s', task.taskId, task.state, task.branch,
    #(task.commits or {}), pushed)
  if task.prUrl then
    text = text .. ', ' .. task.prUrl
  end
  if task.message then
    text = text .. ' (' .. task.message .. ')'
  end
  return text
end

-- Sends one task request; on success shows the task (or hands it to on_task), on failure the server's sentence.
local function send(method, params, what, on_task)
  local workspace = state.current_workspace()
  client.request(workspace, method, params, function(err, result)
    if err ~= nil then
      local files = type(err.data) == 'table' and err.data.files or nil
      local suffix = files and (' [' .. table.concat(files, ', ') .. ']') or ''
      notify(what .. ': ' .. client.describe_error(err) .. suffix, vim.log.levels.ERROR)
      return
    end
    if on_task then
      on_task(result)
    else
      notify(describe(result))
    end
  end)
end

-- Opens the pull request's URL with vim.ui.open (0.10+), else shows it.
local function open_pull_request(task)
  notify('pull request for task ' .. task.taskId .. ': ' .. task.prUrl)
  if vim.ui and type(vim.ui.open) == 'function' then
    pcall(vim.ui.open, task.prUrl)
  end
end

agent_tasks.actions = {
  -- `start REPO_URL ID [TITLE…]`, or `start ID` for the workspace's own repository with its uncommitted changes.
  start = function(words)
    if #words == 0 then
      return notify('usage: :Sandlink task start [REPO_URL] ID [TITLE…]', vim.log.levels.ERROR)
    end
    local params
    if words[1]:find('://', 1, true) then
      if words[2] == nil then
        return notify('usage: :Sandlink task start REPO_URL ID [TITLE…]', vim.log.levels.ERROR)
      end
      params = { repo = words[1], taskId = words[2], title = #words > 2 and table.concat(words, ' ', 3) or nil }
    else
      local workspace = state.current_workspace()
      params = { taskId = words[1], title = #words > 1 and table.concat(words, ' ', 2) or nil,
        workspaceFolder = workspace and workspace.root_dir or nil }
    end
    notify('starting task ' .. params.taskId .. '…')
    send(protocol.request.task_start, params, 'task start')
  end,
  status = function(words)
    send(protocol.request.task_status, { taskId = words[1] or '' }, 'task status')
  end,
  commit = function(words)
    if #words < 2 then
      return notify('usage: :Sandlink task commit ID type(scope): subject', vim.log.levels.ERROR)
    end
    send(protocol.request.task_commit, { taskId = words[1], message = table.concat(words, ' ', 2) }, 'task commit')
  end,
  push = function(words)
    send(protocol.request.task_push, { taskId = words[1] or '' }, 'task push')
  end,
  pr = function(words)
    send(protocol.request.task_pr, { taskId = words[1] or '' }, 'task pr', open_pull_request)
  end,
  ['end'] = function(words)
    send(protocol.request.task_end, { taskId = words[1] or '', keep = words[2] == 'keep' }, 'task end')
  end,
  list = function()
    send(protocol.request.task_list, vim.empty_dict(), 'task list', function(result)
      local lines = {}
      for _, task in ipairs(result.tasks or {}) do
        table.insert(lines, describe(task))
      end
      notify(#lines == 0 and 'no tasks' or table.concat(lines, '\n'))
    end)
  end,
}

function agent_tasks.action_names()
  local names = vim.tbl_keys(agent_tasks.actions)
  table.sort(names)
  return names
end

-- Runs `:Sandlink task ACTION ARGS…`.
function agent_tasks.run(words)
  local action = agent_tasks.actions[words[1] or '']
  if action == nil then
    return notify('task needs one of: ' .. table.concat(agent_tasks.action_names(), ', '), vim.log.levels.ERROR)
  end
  action(vim.list_slice(words, 2))
end

return agent_tasks
