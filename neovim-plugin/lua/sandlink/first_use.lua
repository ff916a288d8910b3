-- First use in Neovim: asking for what a driver cannot connect without (docker: an image, offering the workspace's dev
-- container image and local images from the server), and uploading a file that sync held back as a likely secret.

local client = require('sandlink.client')
local protocol = require('sandlink.protocol')

local first_use = {}

local function notify(message, level)
  vim.notify('sandlink: ' .. message, level or vim.log.levels.INFO)
end

-- The files of a session's sync state that stayed on this machine, as { path, rule } tables.
function first_use.held_back(session)
  local sync = type(session) == 'table' and type(session.sync) == 'table' and session.sync or {}
  if type(sync.heldBack) == 'table' then
    return sync.heldBack
  end
  local files = {}
  for _, path in ipairs(type(sync.heldBackSecrets) == 'table' and sync.heldBackSecrets or {}) do
    table.insert(files, { path = path, rule = 'secret-file-name' })
  end
  return files
end

-- The one-line notice at connect naming the held-back files, or nil when there are none.
function first_use.held_back_notice(session)
  local files = first_use.held_back(session)
  if #files == 0 then
    return nil
  end
  local shown = {}
  for index = 1, math.min(#files, 3) do
    table.insert(shown, files[index].path)
  end
  local more = #files > 3 and (' and ' .. (#files - 3) .. ' more') or ''
  local subject = #files == 1 and 'a file that looks' or (#files .. ' files that look')
  return 'kept ' .. subject .. ' like secrets on this machine: ' .. table.concat(shown, ', ') .. more
    .. '; :Sandlink allow uploads one to the sandbox'
end

-- The settings of `driver_id` that a connect with its defaults cannot do without (DriverInfo.settings' askAtConnect).
function first_use.asked_settings(drivers, driver_id)
  for _, driver in ipairs(drivers or {}) do
    if driver.id == driver_id then
      local asked = {}
      for _, setting in ipairs(driver.settings or {}) do
        if setting.askAtConnect == true then
          table.insert(asked, setting)
        end
      end
      return asked
    end
  end
  return {}
end

-- Asks for one setting: a pick from the server's choices, or typed. on_value(value) gets nil when the user backed out.
local function ask_one(workspace, driver_id, setting, on_value)
  local params = { driver = driver_id, setting = setting.name, workspaceFolder = vim.uri_from_fname(workspace.root_dir) }
  client.request(workspace, protocol.request.setting_choices, params, function(err, result)
    local choices = (not err and type(result) == 'table' and type(result.choices) == 'table') and result.choices or {}
    local function type_it()
      vim.ui.input({ prompt = driver_id .. ' ' .. setting.name .. ' (' .. tostring(setting.description) .. '): ' }, function(text)
        text = text and vim.trim(text) or ''
        on_value(text ~= '' and text or nil)
      end)
    end
    if #choices == 0 then
      return type_it()
    end
    local typed = { typed = true }
    local items = vim.list_extend(vim.deepcopy(choices), { typed })
    vim.ui.select(items, {
      prompt = 'sandlink: ' .. setting.name .. ' for ' .. driver_id .. ' (' .. tostring(setting.description) .. ')',
      kind = 'sandlink.setting_choice',
      format_item = function(item)
        if item.typed then
          return 'Type a value...'
        end
        local label = item.label or (type(item.value) == 'string' and item.value or vim.fn.json_encode(item.value))
        return item.detail and (label .. '  (' .. item.detail .. ')') or label
      end,
    }, function(choice)
      if choice == nil then
        return on_value(nil)
      end
      if choice.typed then
        return type_it()
      end
      on_value(choice.value)
    end)
  end)
end

-- Fills in what `driver_id` asks for at connect, one setting after another: on_done(settings) with a table (empty when
-- the driver asks for nothing), or on_done(nil, names) when the user backed out of one.
function first_use.ask_connect_settings(workspace, driver_id, on_done)
  client.request(workspace, protocol.request.drivers, {}, function(err, result)
    local asked = first_use.asked_settings(not err and type(result) == 'table' and result.drivers or {}, driver_id)
    local settings = {}
    local index = 0
    local function next_setting()
      index = index + 1
      local setting = asked[index]
      if setting == nil then
        return on_done(settings)
      end
      ask_one(workspace, driver_id, setting, function(value)
        if value == nil then
          local names = {}
          for _, each in ipairs(asked) do
            table.insert(names, each.name)
          end
          return on_done(nil, table.concat(names, ', '))
        end
        settings[setting.name] = value
        next_setting()
      end)
    end
    next_setting()
  end)
end

-- A driver connected without a profile that lacks a required key (`credentialsMissing`): offers to keep the key in
-- the system keychain under a profile named after the driver (made with the settings just used). on_done(profile)
-- with the profile to connect with, or on_done(nil) when the user declined or the key could not be stored (the
-- server's refusal then names the environment variable to set instead).
function first_use.offer_to_store_key(workspace, params, err, on_done)
  local kind = type(err) == 'table' and type(err.data) == 'table' and err.data.kind or nil
  if kind ~= 'credentialsMissing' or not params.driver or params.profile then
    return on_done(nil)
  end
  client.request(workspace, protocol.request.drivers, {}, function(drivers_err, drivers_result)
    local driver
    for _, candidate in ipairs(not drivers_err and type(drivers_result) == 'table' and drivers_result.drivers or {}) do
      if candidate.id == params.driver then
        driver = candidate
      end
    end
    local missing = {}
    for _, credential in ipairs(driver and driver.credentials or {}) do
      if credential.required then
        table.insert(missing, credential)
      end
    end
    if #missing == 0 then
      return on_done(nil)
    end
    local names, variables = {}, {}
    for _, credential in ipairs(missing) do
      table.insert(names, credential.description)
      table.insert(variables, credential.envVar)
    end
    local store = 'Store it in the system keychain (profile "' .. driver.id .. '")'
    vim.ui.select({ store, 'Not now (set ' .. table.concat(variables, ', ') .. ' instead)' }, {
      prompt = 'sandlink: the ' .. driver.id .. ' driver needs ' .. table.concat(names, ' and '),
      kind = 'sandlink.store_key',
    }, function(choice)
      if choice ~= store then
        return on_done(nil)
      end
      local save = { name = driver.id, driver = driver.id, settings = params.settings or vim.empty_dict() }
      client.request(workspace, protocol.request.save_profile, save, function(save_err)
        if save_err then
          notify('saving the profile ' .. driver.id .. ' failed: ' .. tostring(save_err.message), vim.log.levels.ERROR)
          return on_done(nil)
        end
        local index = 0
        local function next_key()
          index = index + 1
          local credential = missing[index]
          if credential == nil then
            return on_done(driver.id)
          end
          -- inputsecret: the typed value is not echoed and goes straight to the keychain request.
          local value = vim.fn.inputsecret(credential.description .. ' for ' .. driver.id .. ' (kept in the keychain): ')
          if value == nil or value == '' then
            return on_done(nil)
          end
          local request = { profile = driver.id, key = credential.key, value = value }
          client.request(workspace, protocol.request.set_credential, request, function(set_err)
            if set_err then
              notify('storing the key failed: ' .. tostring(set_err.message), vim.log.levels.ERROR)
              return on_done(nil)
            end
            next_key()
          end)
        end
        next_key()
      end)
    end)
  end)
end

-- Uploads one held-back file after the user chose it (and, with a profile, whether to remember it there).
-- on_done(err, result) with the sync result.
function first_use.allow(workspace, path, on_done)
  on_done = on_done or function() end
  local session = workspace.session
  if session == nil then
    notify('not connected to a sandbox', vim.log.levels.WARN)
    return on_done({ message = 'not connected' })
  end
  local files = first_use.held_back(session)
  local function with_path(chosen)
    local scopes = { 'Upload it for this session' }
    if session.profile and session.profile ~= vim.NIL then
      table.insert(scopes, 'Upload it and allow it in profile ' .. tostring(session.profile))
    end
    vim.ui.select(scopes, {
      prompt = 'sandlink: ' .. chosen .. ' looks like a secret. Upload it to the ' .. tostring(session.driver)
        .. ' sandbox, where commands can read it?',
      kind = 'sandlink.allow_secret',
    }, function(scope, scope_index)
      if scope == nil then
        return on_done(nil, nil)
      end
      local params = { sessionId = session.sessionId, path = chosen, remember = scope_index == 2 }
      client.request(workspace, protocol.request.allow_secret, params, function(err, result)
        if err then
          notify('uploading ' .. chosen .. ' failed: ' .. tostring(err.message or err), vim.log.levels.ERROR)
          return on_done(err)
        end
        notify(chosen .. ' uploaded to the sandbox'
          .. (params.remember and (' and allowed in profile ' .. tostring(session.profile)) or ' for this session'))
        on_done(nil, result)
      end)
    end)
  end
  if path and path ~= '' then
    return with_path(path)
  end
  if #files == 0 then
    notify('no files are held back in this session')
    return on_done(nil, nil)
  end
  vim.ui.select(files, {
    prompt = 'sandlink: which held-back file should go to the sandbox?',
    kind = 'sandlink.held_back',
    format_item = function(file)
      return file.path .. '  (' .. tostring(file.rule) .. ')'
    end,
  }, function(file)
    if file == nil then
      return on_done(nil, nil)
    end
    with_path(file.path)
  end)
end

return first_use
