@rem Gradle wrapper launcher for the dmad Android demo (Windows).
@rem It runs gradle\wrapper\gradle-wrapper.jar (committed), which downloads the Gradle pinned in
@rem gradle\wrapper\gradle-wrapper.properties (8.13); Android Studio does not need it.
@if "%DEBUG%"=="" @echo off
setlocal
set APP_HOME=%~dp0
set WRAPPER_JAR=%APP_HOME%gradle\wrapper\gradle-wrapper.jar

if exist "%WRAPPER_JAR%" goto findJava
echo gradlew: %WRAPPER_JAR% is missing. 1>&2
echo It is part of the repository: restore it, or create it: 1>&2
echo   cd "%APP_HOME%" ^&^& gradle wrapper --gradle-version 8.13     (any Gradle 8 or newer on PATH) 1>&2
echo Android Studio does not need it: open this folder there to build and run the app. 1>&2
exit /b 1

:findJava
if defined JAVA_HOME goto javaHome
set JAVA_EXE=java.exe
%JAVA_EXE% -version >NUL 2>&1
if %ERRORLEVEL% equ 0 goto execute
echo gradlew: no java.exe on PATH and JAVA_HOME is not set (a JDK 17 or newer is needed) 1>&2
exit /b 1

:javaHome
set JAVA_EXE=%JAVA_HOME%\bin\java.exe
if exist "%JAVA_EXE%" goto execute
echo gradlew: JAVA_HOME is set to "%JAVA_HOME%" but %JAVA_EXE% does not exist 1>&2
exit /b 1

:execute
"%JAVA_EXE%" -Xmx64m -Xms64m %JAVA_OPTS% %GRADLE_OPTS% "-Dorg.gradle.appname=gradlew" -classpath "%WRAPPER_JAR%" org.gradle.wrapper.GradleWrapperMain %*
exit /b %ERRORLEVEL%
